package planner

import (
	"fmt"

	"go.yaml.in/yaml/v3"

	"ebb.dev/ebb/planner/strictyaml"
)

// MetricsAuth says how ebb authenticates to the Prometheus-compatible server of a metrics
// check (Thanos, Mimir, OpenShift monitoring): basic auth, a bearer token, TLS, or a mix. A
// credential is never written in the pipeline (which lives in Git): each names a key of a
// Secret in ebb's namespace, or a file the daemon can read (a mounted Secret, a projected
// ServiceAccount token).
type MetricsAuth struct {
	// BasicAuth sends a user name and password.
	BasicAuth *MetricsBasicAuth `json:"basicAuth,omitempty"`
	// BearerToken sends "Authorization: Bearer <token>".
	BearerToken *SecretSource `json:"bearerToken,omitempty"`
	// TLS verifies the server with a CA, presents a client certificate, or both.
	TLS *MetricsTLS `json:"tls,omitempty"`
}

// MetricsBasicAuth is HTTP basic auth; the user name is not secret, the password is.
type MetricsBasicAuth struct {
	Username string       `json:"username"`
	Password SecretSource `json:"password"`
}

// MetricsTLS is the TLS of the connection to Prometheus.
type MetricsTLS struct {
	// CA verifies the server's certificate instead of the system roots.
	CA *SecretSource `json:"ca,omitempty"`
	// Cert and Key are a client certificate and its key, PEM; both or neither.
	Cert *SecretSource `json:"cert,omitempty"`
	Key  *SecretSource `json:"key,omitempty"`
	// ServerName overrides the name the server's certificate is checked against.
	ServerName string `json:"serverName,omitempty"`
	// InsecureSkipVerify accepts any server certificate.
	InsecureSkipVerify bool `json:"insecureSkipVerify,omitempty"`
}

// SecretSource is where a credential is read when the check runs: exactly one of a key of a
// Secret in ebb's own namespace, or a file on the daemon's file system.
type SecretSource struct {
	Secret *SecretKeyRef `json:"secret,omitempty"`
	File   string        `json:"file,omitempty"`
}

// SecretKeyRef names a key of a Secret in ebb's namespace.
type SecretKeyRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// DecodeNode reads {secret: {name, key}} or {file: PATH}, and refuses a credential written in
// the pipeline (which lives in Git), without repeating it in the error.
func (s *SecretSource) DecodeNode(n *yaml.Node) error {
	const want = "want {secret: {name: NAME, key: KEY}} (a Secret in ebb's namespace) or {file: PATH}"
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("a credential is never written in the pipeline (it lives in Git): %s", want)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, n.Content[i+1]
		switch key {
		case "file":
			if val.Kind != yaml.ScalarNode {
				return fmt.Errorf("file: want a path, got %s", strictyaml.Describe(val))
			}
			s.File = val.Value
		case "secret":
			ref, err := decodeSecretKeyRef(val)
			if err != nil {
				return fmt.Errorf("secret: %w", err)
			}
			s.Secret = ref
		default:
			return fmt.Errorf("unknown field %q: %s", key, want)
		}
	}
	return nil
}

// decodeSecretKeyRef reads {name: NAME, key: KEY}.
func decodeSecretKeyRef(n *yaml.Node) (*SecretKeyRef, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("want {name: NAME, key: KEY}, got %s", strictyaml.Describe(n))
	}
	ref := &SecretKeyRef{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i].Value, n.Content[i+1]
		if val.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("%s: want a string, got %s", key, strictyaml.Describe(val))
		}
		switch key {
		case "name":
			ref.Name = val.Value
		case "key":
			ref.Key = val.Value
		default:
			return nil, fmt.Errorf("unknown field %q: want name and key", key)
		}
	}
	return ref, nil
}

// metricsAuth checks the auth of the metrics check at path (…verify.metrics.auth).
func (v *validator) metricsAuth(path string, a *MetricsAuth) {
	if a == nil {
		return
	}
	if a.BasicAuth == nil && a.BearerToken == nil && a.TLS == nil {
		v.errorf(path, "%s is empty: set basicAuth, bearerToken or tls", path)
	}
	if a.BasicAuth != nil && a.BearerToken != nil {
		v.errorf(path, "%s: basicAuth and bearerToken both set an Authorization header; choose one", path)
	}
	if b := a.BasicAuth; b != nil {
		if b.Username == "" {
			v.errorf(path+".basicAuth", "missing required field \"username\" in %s.basicAuth", path)
		}
		v.secretSource(path+".basicAuth.password", &b.Password)
	}
	if a.BearerToken != nil {
		v.secretSource(path+".bearerToken", a.BearerToken)
	}
	if t := a.TLS; t != nil {
		for _, f := range []struct {
			name string
			s    *SecretSource
		}{{"ca", t.CA}, {"cert", t.Cert}, {"key", t.Key}} {
			if f.s != nil {
				v.secretSource(path+".tls."+f.name, f.s)
			}
		}
		if (t.Cert == nil) != (t.Key == nil) {
			v.errorf(path+".tls", "%s.tls: cert and key go together; set both or neither", path)
		}
	}
}

// secretSource checks that exactly one source is set, and that a Secret reference is whole.
func (v *validator) secretSource(path string, s *SecretSource) {
	switch {
	case s.Secret == nil && s.File == "":
		v.errorf(path, "%s: set secret: {name, key} (a Secret in ebb's namespace) or file: PATH", path)
	case s.Secret != nil && s.File != "":
		v.errorf(path, "%s: set secret or file, not both", path)
	case s.Secret != nil:
		if s.Secret.Name == "" || s.Secret.Key == "" {
			v.errorf(path+".secret", "%s.secret needs name and key", path)
		} else {
			v.dnsLabel(path+".secret.name", "Secret name", s.Secret.Name)
		}
	}
}
