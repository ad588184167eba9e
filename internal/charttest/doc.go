// Package charttest tests the Helm chart in charts/ebb with the real helm and kubectl
// binaries against real local clusters: lint and render with default and non-default values,
// the values schema, an install the API server accepts, the real daemon binary running with
// exactly the chart's RBAC (impersonating its ServiceAccount), and stages on other clusters
// reached through kubeconfig Secrets. The install steps are those of docs/install.md.
//
// It holds only tests.
package charttest
