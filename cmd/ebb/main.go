// Command ebb is the GitOps reconciler daemon (`ebb run`) and its command-line tools: validate
// and plan pipelines, write new ones, and read the executions the daemon records.
package main

import "os"

func main() { os.Exit(run()) }
