{{- define "rlfleet.name" -}}rlfleet{{- end -}}

{{- define "rlfleet.fullname" -}}
{{- printf "%s-rlfleet-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rlfleet.labels" -}}
app.kubernetes.io/name: rlfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "rlfleet.selectorLabels" -}}
app.kubernetes.io/name: rlfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "rlfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rlfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rlfleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Rules the operator needs inside every namespace it watches. */}}
{{- define "rlfleet.namespacedRules" -}}
- apiGroups: ["rlfleet.io"]
  resources: ["inferencepools"]
  verbs: ["get", "list", "watch", "patch"]  # patch: kopf's finalizer and bookkeeping annotations
- apiGroups: ["rlfleet.io"]
  resources: ["inferencepools/status"]
  verbs: ["get", "patch"]
- apiGroups: ["rlfleet.io"]
  resources: ["inferencepools/finalizers"]
  verbs: ["update"]  # owner references with blockOwnerDeletion
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "create", "patch"]  # server-side apply
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]  # read the control token; create <pool>-control-token if none is named
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]  # pod IPs (replicas are called directly); patch: the serving label that fences one
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
