package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// version is the binary's version, set when it is built:
//
//	go build -ldflags "-X main.version=0.2.0" ./cmd/ebb
//
// The Makefile and the Dockerfile set it from charts/ebb/Chart.yaml's appVersion, which is also
// the chart's default image tag: one place says which version a release runs. Unset (go run,
// go install), the module version from the build info is used.
var version = ""

// versionInfo is one side of `ebb version`.
type versionInfo struct {
	Version string `json:"version"`
	// Commit and GoVersion describe the binary (client side only).
	Commit    string `json:"commit,omitempty"`
	GoVersion string `json:"goVersion,omitempty"`
	// Deployment and Image say where the daemon's version was read (daemon side only).
	Deployment string `json:"deployment,omitempty"`
	Image      string `json:"image,omitempty"`
}

// versions is what `ebb version -o json|yaml` prints.
type versions struct {
	Client versionInfo   `json:"clientVersion"`
	Daemon []versionInfo `json:"daemonVersion,omitempty"`
}

func newVersionCommand() *cobra.Command {
	var (
		rf         recordFlags
		clientOnly bool
		output     string
	)
	cmd := &cobra.Command{
		Use:   "version [--client] [-o json|yaml]",
		Short: "Print the version of this binary and of the daemon running in the cluster",
		Long: `Print this binary's version and the daemon's: the image tag of the ebb Deployment
(label app.kubernetes.io/name=ebb) in the records' namespace. --client prints the binary's
only, without asking the cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output, "json", "yaml"); err != nil {
				return err
			}
			v := versions{Client: binaryVersion()}
			var daemonErr error
			if !clientOnly {
				v.Daemon, daemonErr = daemonVersions(cmd.Context(), &rf)
			}
			if output != "" {
				if err := printStructured(cmd.OutOrStdout(), output, v); err != nil {
					return err
				}
			} else {
				printVersions(cmd.OutOrStdout(), v)
			}
			return daemonErr
		},
	}
	rf.add(cmd)
	cmd.Flags().BoolVar(&clientOnly, "client", false, "only this binary's version; do not ask the cluster")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: json or yaml")
	return cmd
}

// binaryVersion is the version set at build time, else the module's, with the commit and Go
// version the build info records.
func binaryVersion() versionInfo {
	v := versionInfo{Version: version}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		if v.Version == "" {
			v.Version = "unknown"
		}
		return v
	}
	v.GoVersion = info.GoVersion
	if v.Version == "" {
		v.Version = info.Main.Version // "(devel)" for a build from a work tree
	}
	dirty := false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(v.Commit) > 12 {
		v.Commit = v.Commit[:12]
	}
	if dirty && v.Commit != "" {
		v.Commit += "-dirty"
	}
	return v
}

// daemonVersions reads the version of each ebb Deployment in the records' namespace from its
// container's image tag (the chart's appVersion unless image.tag overrides it).
func daemonVersions(ctx context.Context, rf *recordFlags) ([]versionInfo, error) {
	cfg, err := rf.restConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	const selector = "app.kubernetes.io/name=ebb"
	list, err := cs.AppsV1().Deployments(rf.namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("read the daemon's version: %w", err)
	}
	var out []versionInfo
	for _, d := range list.Items {
		for _, c := range d.Spec.Template.Spec.Containers {
			if c.Name != "ebb" {
				continue
			}
			out = append(out, versionInfo{Version: imageTag(c.Image, d.Labels["app.kubernetes.io/version"]), Image: c.Image, Deployment: d.Namespace + "/" + d.Name})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no daemon found: no Deployment labelled %s in namespace %s (-n)", selector, rf.namespace)
	}
	return out, nil
}

// imageTag is the tag of image (after a digest, if any, is cut), else fallback.
func imageTag(image, fallback string) string {
	image, _, _ = strings.Cut(image, "@")
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	if fallback != "" {
		return fallback
	}
	return "unknown"
}

func printVersions(w io.Writer, v versions) {
	fmt.Fprintf(w, "Client Version: %s", v.Client.Version)
	var details []string
	if v.Client.Commit != "" {
		details = append(details, "commit "+v.Client.Commit)
	}
	if v.Client.GoVersion != "" {
		details = append(details, v.Client.GoVersion)
	}
	if len(details) > 0 {
		fmt.Fprintf(w, " (%s)", strings.Join(details, ", "))
	}
	fmt.Fprintln(w)
	for _, d := range v.Daemon {
		fmt.Fprintf(w, "Daemon Version: %s (deployment %s, image %s)\n", d.Version, d.Deployment, d.Image)
	}
}
