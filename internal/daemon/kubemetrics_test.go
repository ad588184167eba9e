package daemon

import "testing"

func TestResourceOf(t *testing.T) {
	for path, want := range map[string]string{
		"/api/v1/namespaces/web/services/web":                               "services",
		"/api/v1/namespaces/web":                                            "namespaces",
		"/apis/apps/v1/namespaces/web/deployments":                          "deployments",
		"/apis/coordination.k8s.io/v1/namespaces/ebb-system/leases/ebb":     "leases",
		"/apis/ebb.dev/v1alpha1/namespaces/ebb-system/executions/web-3":     "executions",
		"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.ebb.dev": "customresourcedefinitions",
		"/api":     "other",
		"/healthz": "other",
	} {
		if got := resourceOf(path); got != want {
			t.Errorf("resourceOf(%q) = %q, want %q", path, got, want)
		}
	}
}
