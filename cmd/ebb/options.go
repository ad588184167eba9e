package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/internal/redact"
	"ebb.dev/ebb/planner"
	"ebb.dev/ebb/reconciler"
)

// plannerOptions reads the daemon config, when one is given, into planner options: its cluster
// names are the only ones stages may use, it may allow remote bases, and it may set limits.
func plannerOptions(configFile string) (planner.Options, *config.Config, error) {
	opts := planner.DefaultOptions()
	if configFile == "" {
		return opts, nil, nil
	}
	cfg, err := config.Load(configFile)
	if err != nil {
		return opts, nil, err
	}
	opts.Clusters = cfg.ClusterNames()
	opts.AllowRemoteBases = cfg.AllowRemoteBases
	opts.Limits = cfg.Limits.Planner()
	return opts, cfg, nil
}

// checkFormat accepts the -o values a command supports; "" is its human-readable output.
func checkFormat(got string, allowed ...string) error {
	for _, a := range append([]string{""}, allowed...) {
		if got == a {
			return nil
		}
	}
	return usageErrorf("-o %q: want one of %v", got, allowed)
}

// printStructured writes v as JSON or YAML.
func printStructured(w io.Writer, format string, v any) error {
	switch format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	}
	return fmt.Errorf("unknown output format %q", format)
}

// defaultNamespace holds ebb's records when neither -n nor the kubeconfig context names one.
const defaultNamespace = "ebb-system"

// recordFlags are kubectl's connection flags (cli-runtime's ConfigFlags: --kubeconfig,
// --context, -n, --as, --token, ...) on every command that talks to the cluster ebb runs in.
// The records' namespace is -n, else the kubeconfig context's namespace, else ebb-system.
type recordFlags struct {
	kube *genericclioptions.ConfigFlags
	// namespace is the records' namespace, once restConfig or store has resolved it.
	namespace string
}

func (f *recordFlags) add(cmd *cobra.Command) {
	f.kube = genericclioptions.NewConfigFlags(false)
	f.kube.CacheDir = nil // ebb does no discovery; and `ebb run` has a --cache-dir of its own
	f.kube.AddFlags(cmd.Flags())
	cmd.Flags().Lookup("namespace").Usage = "namespace of ebb's records (default: the kubeconfig context's namespace, else " + defaultNamespace + ")"
}

// restConfig returns the client config the flags say, and resolves the records' namespace.
func (f *recordFlags) restConfig() (*rest.Config, error) {
	cfg, err := f.kube.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	f.namespace = f.resolveNamespace()
	return cfg, nil
}

// resolveNamespace is -n, else the namespace of the kubeconfig context in use, else
// ebb-system (kubectl would say "default", where ebb's records never are).
func (f *recordFlags) resolveNamespace() string {
	if ns := *f.kube.Namespace; ns != "" {
		return ns
	}
	raw, err := f.kube.ToRawKubeConfigLoader().RawConfig()
	if err != nil {
		return defaultNamespace
	}
	name := raw.CurrentContext
	if c := *f.kube.Context; c != "" {
		name = c
	}
	if c := raw.Contexts[name]; c != nil && c.Namespace != "" {
		return c.Namespace
	}
	return defaultNamespace
}

func (f *recordFlags) store() (*reconciler.Store, error) {
	dyn, err := f.client()
	if err != nil {
		return nil, err
	}
	return reconciler.NewStore(dyn, f.namespace), nil
}

// client is a dynamic client of the cluster the flags name; it resolves the namespace too.
func (f *recordFlags) client() (dynamic.Interface, error) {
	cfg, err := f.restConfig()
	if err != nil {
		return nil, err
	}
	return dynamic.NewForConfig(cfg)
}

// outputFlags are -o of a command that prints objects: its own table ("", and "wide" where it
// has one), or cli-runtime's printers, as kubectl get: json, yaml, name, jsonpath=...,
// jsonpath-file=..., go-template=..., go-template-file=....
type outputFlags struct {
	print  *genericclioptions.PrintFlags
	tables []string
}

// add registers -o; tables are the formats the command prints itself, besides "".
func (o *outputFlags) add(cmd *cobra.Command, tables ...string) {
	o.print = genericclioptions.NewPrintFlags("")
	o.tables = tables
	o.print.AddFlags(cmd)
	formats := append(append([]string{}, tables...), o.print.AllowedFormats()...)
	cmd.Flags().Lookup("output").Usage = "output format: " + strings.Join(formats, ", ")
	_ = cmd.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return formats, cobra.ShellCompDirectiveNoFileComp
	})
}

// format is the -o value.
func (o *outputFlags) format() string { return *o.print.OutputFormat }

// table reports whether the command prints its own table, and whether it is the wide one.
func (o *outputFlags) table() (table, wide bool) {
	f := o.format()
	if f == "" {
		return true, false
	}
	for _, t := range o.tables {
		if f == t {
			return true, f == "wide"
		}
	}
	return false, false
}

// validate fails with a usage error on a format nothing prints, or a jsonpath that does not
// parse, before the command talks to the cluster.
func (o *outputFlags) validate() error {
	if table, _ := o.table(); table {
		return nil
	}
	if _, err := o.print.ToPrinter(); err != nil {
		formats := append(append([]string{}, o.tables...), "json", "yaml", "name", "jsonpath=TEMPLATE", "jsonpath-file=FILE", "go-template=TEMPLATE", "go-template-file=FILE")
		if !genericclioptions.IsNoCompatiblePrinterError(err) {
			return usageErrorf("--output %q: %v", o.format(), err)
		}
		return usageErrorf("--output %q: want one of %s", o.format(), strings.Join(formats, ", "))
	}
	return nil
}

// printObjects prints objects (Execution, Pipeline values of group ebb.dev), one as itself,
// several, or none, as a List, as kubectl prints them. Whatever a record holds is redacted
// again: records written before URLs were redacted where they are made may hold one.
func (o *outputFlags) printObjects(w io.Writer, kind string, list bool, objects ...any) error {
	printer, err := o.print.ToPrinter()
	if err != nil {
		return usageErrorf("--output %q: %v", o.format(), err)
	}
	items := make([]unstructured.Unstructured, 0, len(objects))
	for _, obj := range objects {
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
		if err != nil {
			return err
		}
		u := unstructured.Unstructured{Object: content}
		u.SetAPIVersion(reconciler.Group + "/" + reconciler.Version)
		u.SetKind(kind)
		items = append(items, u)
	}
	var out runtime.Object
	if list {
		l := &unstructured.UnstructuredList{Items: items}
		l.SetAPIVersion("v1")
		l.SetKind("List")
		out = l
	} else {
		out = &items[0]
	}
	var buf strings.Builder
	if err := printer.PrintObj(out, &buf); err != nil {
		return err
	}
	_, err = io.WriteString(w, redact.Text(buf.String()))
	return err
}
