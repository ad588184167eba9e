package main

import (
	"encoding/json"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"

	"ebb.dev/ebb/internal/config"
	"ebb.dev/ebb/planner"
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
