#!/usr/bin/env bash
# build.sh builds the binaries ebb's tests run against, from the Go module proxy, at pinned
# versions, into a git-ignored cache folder (default .cache/testbin at the top of the repo, or
# $EBB_TESTBIN). A binary is rebuilt only when its pinned version, or the source that pins it,
# changes: each group writes a stamp file holding the key it was built for.
#
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (tools/testbin, Kubernetes v1.37.2)
#   kwok   sigs.k8s.io/kwok v0.8.0 (its stages are copied into internal/testcluster/stages)
#   helm   helm.sh/helm/v3  v3.22.0
set -euo pipefail

KUBERNETES_VERSION=v1.37.2
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/.." && pwd)
out=${EBB_TESTBIN:-$top/.cache/testbin}
mkdir -p "$out"
gover=$(go env GOVERSION)

# fresh NAME KEY BIN... succeeds when every BIN exists and NAME's stamp holds KEY.
fresh() {
  local name=$1 key=$2; shift 2
  [ "$(cat "$out/.stamp-$name" 2>/dev/null)" = "$key" ] || return 1
  for b in "$@"; do [ -x "$out/$b" ] || return 1; done
}

k8s_key="$KUBERNETES_VERSION $gover $(cat "$here/testbin/go.mod" "$here/testbin/go.sum" "$here"/testbin/cmd/*/main.go | sha256sum | cut -c1-16)"
k8s_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
if fresh kubernetes "$k8s_key" "${k8s_bins[@]}"; then
  echo "testbin: ${k8s_bins[*]} $KUBERNETES_VERSION up to date in $out"
else
  echo "testbin: building ${k8s_bins[*]} ($KUBERNETES_VERSION) into $out; the first build takes several minutes"
  v=k8s.io/component-base/version
  minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  ldflags="-s -w -X $v.gitVersion=$KUBERNETES_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  (cd "$here/testbin" && go build -ldflags "$ldflags" -o "$out/" ./cmd/...)
  echo "$k8s_key" > "$out/.stamp-kubernetes"
fi

# gobin NAME PACKAGE VERSION installs a main package at a version with `go install`, which
# builds it with the module's own go.mod, as its authors test it.
gobin() {
  local name=$1 pkg=$2 version=$3 key="$3 $gover"
  if fresh "$name" "$key" "$name"; then
    echo "testbin: $name $version up to date"
    return
  fi
  echo "testbin: building $name $version"
  GOBIN="$out" go install -ldflags "-s -w" "$pkg@$version"
  echo "$key" > "$out/.stamp-$name"
}
gobin kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
gobin helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"

echo "testbin: ready in $out"
