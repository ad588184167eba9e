// Package config reads the daemon's config file, the one `--config` names: which clusters
// stages may deploy to and how to reach each, and what the planner allows. It is parsed as
// strictly as a pipeline, with every error located at `file:line:col`.
package config

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"ebb.dev/ebb/planner/strictyaml"
)

// APIVersion and Kind identify a config document.
const (
	APIVersion = "ebb.dev/v1alpha1"
	Kind       = "Config"
)

// Config is the daemon's configuration.
type Config struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Clusters are the endpoints stages name in their `cluster` field.
	Clusters []Cluster `json:"clusters"`
	// AllowRemoteBases lets kustomizations use remote bases. Default false.
	AllowRemoteBases bool `json:"allowRemoteBases"`
	// Limits bound what the planner reads from Git and how long a render may take.
	Limits Limits `json:"limits"`
	// Notifications are the receivers told of execution statuses (notifications.go).
	Notifications []Notification `json:"notifications"`
	// WriteBack configures the commits written to Git after a rollback.
	WriteBack WriteBack `json:"writeBack"`
}

// Cluster is one endpoint. Exactly one of InCluster, Kubeconfig and KubeconfigSecret is set.
type Cluster struct {
	// Name is what stages write in `cluster:`; a DNS label.
	Name string `json:"name"`
	// InCluster uses the daemon's own service account: the cluster it runs in.
	InCluster bool `json:"inCluster"`
	// Kubeconfig is the path of a kubeconfig file; its current context is used.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// KubeconfigSecret names a key of a Secret, in the daemon's own cluster, that holds a
	// kubeconfig: how a Helm install reaches other clusters.
	KubeconfigSecret *SecretKey `json:"kubeconfigSecret,omitempty"`
}

// SecretKey names one key of one Secret.
type SecretKey struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Key       string `json:"key"`
}

// Load reads and parses the config file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse strictly parses a config file. Every error is reported at once, as a
// strictyaml.ErrorList.
func Parse(file string, data []byte) (*Config, error) {
	docs, err := strictyaml.ParseDocuments(file, data)
	if err != nil {
		return nil, err
	}
	if len(docs) != 1 {
		return nil, strictyaml.ErrorList{{File: file, Pos: strictyaml.Pos{Line: 1, Col: 1},
			Msg: fmt.Sprintf("a config file holds one document, found %d", len(docs))}}
	}
	c := &Config{}
	fields, errs := strictyaml.Decode(file, docs[0], c)
	errs = append(errs, c.validate(file, fields)...)
	if len(errs) > 0 {
		errs.Sort()
		return nil, errs
	}
	return c, nil
}

// validate checks what decoding cannot.
func (c *Config) validate(file string, fields *strictyaml.Fields) strictyaml.ErrorList {
	var errs strictyaml.ErrorList
	errorf := func(path, format string, args ...any) {
		errs = append(errs, &strictyaml.Error{File: file, Pos: fields.Lookup(path), Msg: fmt.Sprintf(format, args...)})
	}
	if c.APIVersion != APIVersion && !fields.Failed("apiVersion") {
		errorf("apiVersion", "apiVersion must be %q, got %q", APIVersion, c.APIVersion)
	}
	if c.Kind != Kind && !fields.Failed("kind") {
		errorf("kind", "kind must be %q, got %q", Kind, c.Kind)
	}
	c.Limits.validate(errorf, fields)
	c.validateNotifications(errorf, fields)
	seen := map[string]bool{}
	for i, cl := range c.Clusters {
		at := fmt.Sprintf("clusters[%d]", i)
		switch {
		case fields.Failed(at + ".name"):
		case cl.Name == "":
			errorf(at, "missing required field \"name\" in %s", at)
		case len(validation.IsDNS1123Label(cl.Name)) > 0:
			errorf(at+".name", "bad cluster name %q: use lowercase letters, digits and '-'", cl.Name)
		case seen[cl.Name]:
			errorf(at+".name", "duplicate cluster name %q", cl.Name)
		}
		seen[cl.Name] = true
		if n := cl.sources(); n != 1 {
			errorf(at, "cluster %q needs exactly one of inCluster, kubeconfig and kubeconfigSecret, found %d", cl.Name, n)
		}
		if s := cl.KubeconfigSecret; s != nil {
			for _, f := range []struct{ name, value string }{{"namespace", s.Namespace}, {"name", s.Name}, {"key", s.Key}} {
				if f.value == "" && !fields.Failed(at+".kubeconfigSecret."+f.name) {
					errorf(at+".kubeconfigSecret", "missing required field %q in %s.kubeconfigSecret", f.name, at)
				}
			}
		}
	}
	return errs
}

func (cl *Cluster) sources() int {
	n := 0
	if cl.InCluster {
		n++
	}
	if cl.Kubeconfig != "" {
		n++
	}
	if cl.KubeconfigSecret != nil {
		n++
	}
	return n
}

// ClusterNames returns the names stages may use, in file order.
func (c *Config) ClusterNames() []string {
	names := make([]string, 0, len(c.Clusters))
	for _, cl := range c.Clusters {
		names = append(names, cl.Name)
	}
	return names
}

// Cluster returns the cluster named name, or nil.
func (c *Config) Cluster(name string) *Cluster {
	for i := range c.Clusters {
		if c.Clusters[i].Name == name {
			return &c.Clusters[i]
		}
	}
	return nil
}

// RESTConfig returns how to reach the cluster. home is a client of the daemon's own cluster,
// used only to read a kubeconfig Secret; it may be nil otherwise. The Secret's content never
// appears in an error.
func (cl *Cluster) RESTConfig(ctx context.Context, home kubernetes.Interface) (*rest.Config, error) {
	switch {
	case cl.InCluster:
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("cluster %q: in-cluster config: %w", cl.Name, err)
		}
		return cfg, nil
	case cl.Kubeconfig != "":
		cfg, err := clientcmd.BuildConfigFromFlags("", cl.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("cluster %q: load kubeconfig %s: %w", cl.Name, cl.Kubeconfig, err)
		}
		return cfg, nil
	case cl.KubeconfigSecret != nil:
		return cl.secretConfig(ctx, home)
	}
	return nil, fmt.Errorf("cluster %q: no connection configured", cl.Name)
}

// secretConfig reads the kubeconfig from the Secret.
func (cl *Cluster) secretConfig(ctx context.Context, home kubernetes.Interface) (*rest.Config, error) {
	ref := cl.KubeconfigSecret
	if home == nil {
		return nil, fmt.Errorf("cluster %q: reading Secret %s/%s needs a client of the daemon's cluster", cl.Name, ref.Namespace, ref.Name)
	}
	secret, err := home.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("cluster %q: read kubeconfig Secret %s/%s: %w", cl.Name, ref.Namespace, ref.Name, err)
	}
	return cl.SecretRESTConfig(secret)
}

// SecretRESTConfig returns how to reach the cluster from its kubeconfig Secret as read, by
// a watch of it or otherwise. The Secret's content never appears in an error.
func (cl *Cluster) SecretRESTConfig(secret *corev1.Secret) (*rest.Config, error) {
	ref := cl.KubeconfigSecret
	if ref == nil {
		return nil, fmt.Errorf("cluster %q has no kubeconfigSecret", cl.Name)
	}
	data, ok := secretValue(secret, ref.Key)
	if !ok {
		return nil, fmt.Errorf("cluster %q: Secret %s/%s has no key %q", cl.Name, ref.Namespace, ref.Name, ref.Key)
	}
	cfg, err := clientcmd.RESTConfigFromKubeConfig(data)
	if err != nil {
		// The parser's message may quote the content; say only where it came from.
		return nil, fmt.Errorf("cluster %q: key %q of Secret %s/%s is not a valid kubeconfig", cl.Name, ref.Key, ref.Namespace, ref.Name)
	}
	return cfg, nil
}

func secretValue(s *corev1.Secret, key string) ([]byte, bool) {
	if v, ok := s.Data[key]; ok {
		return v, true
	}
	if v, ok := s.StringData[key]; ok {
		return []byte(v), true
	}
	return nil, false
}
