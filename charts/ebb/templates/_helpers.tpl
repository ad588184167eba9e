{{/* The release's full name: the release name, with the chart name unless it already holds it. */}}
{{- define "ebb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "ebb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ebb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Labels that select the daemon's pods. */}}
{{- define "ebb.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The ServiceAccount the daemon runs as. */}}
{{- define "ebb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ebb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The kubeconfig Secrets the daemon config names, one per line. */}}
{{- define "ebb.notificationSecrets" -}}
{{- range .Values.notifications }}
{{- with .urlSecret }}
{{ .name }}
{{- end }}
{{- with .signingSecret }}
{{ .name }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "ebb.kubeconfigSecrets" -}}
{{- range .Values.clusters }}
{{- if .kubeconfigSecret }}
{{ .kubeconfigSecret.name }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The rules a stage needs in the namespaces it deploys to, derived from the reconciler:
server-side apply is a patch, and a create when the object does not exist yet; drift checks
get; prune lists by label and deletes; rollout verification gets the Deployment and watches
Deployments by label; Events (events.k8s.io/v1) are recorded on Deployments and restored
objects, and patched when they repeat.
*/}}
{{- define "ebb.deployRules" -}}
- apiGroups: [""]
  resources: [configmaps, secrets, services, serviceaccounts]
  verbs: [get, list, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# Fail-fast watches the pods of a release's new ReplicaSet; a StatefulSet's rollback deletes
# its pods of the failed revision that never got Ready.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The name of the release's cluster-scoped objects (ClusterRoles and their bindings, the approval
policy and its binding) and of its Roles in namespaces it shares with other releases: the full
name and the release namespace, so that releases of the same name in two namespaces never
claim the same object.
*/}}
{{- define "ebb.clusterName" -}}
{{- printf "%s-%s" (include "ebb.fullname" .) .Release.Namespace | trunc 200 | trimSuffix "-" -}}
{{- end -}}
