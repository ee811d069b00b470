{{/*
Object names are fixed (not derived from the release name): the webhook configuration's name
decides the order in which the API server calls it (see values.yaml), the ConfigMap and
Secret names are what `jobset-restart-webhook check` looks for, and the objects are
cluster-wide anyway, so a cluster has one installation.
*/}}
{{- define "jrw.name" -}}jobset-restart-webhook{{- end -}}

{{/* The labels of manifests/base plus Helm's own (the chart-only labels of README.md). */}}
{{- define "jrw.labels" -}}
app.kubernetes.io/name: jobset-restart-webhook
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "jrw.selectorLabels" -}}
app.kubernetes.io/name: jobset-restart-webhook
{{- end -}}

{{- define "jrw.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Whether the cluster config makes every JobSet eligible (then the annotation filter must go). */}}
{{- define "jrw.clusterDefaultEnabled" -}}
{{- $defaults := .Values.config.defaults | default dict -}}
{{- if has (toString (get $defaults "inPlace") | lower) (list "enabled" "true") -}}true{{- end -}}
{{- end -}}

{{/* config.targets as a list (the config accepts a list or "jobsets,pods"). */}}
{{- define "jrw.targets" -}}
{{- $t := .Values.config.targets | default (list "jobsets") -}}
{{- if kindIs "string" $t -}}
{{- $t = splitList "," $t -}}
{{- end -}}
{{- $out := list -}}
{{- range $t }}{{ $out = append $out (trim (toString .)) }}{{ end -}}
{{- join "," $out -}}
{{- end -}}

{{/* Whether the pod target is on: the pod webhook and the JobSet watch's RBAC exist only then. */}}
{{- define "jrw.podTarget" -}}
{{- if has "pods" (splitList "," (include "jrw.targets" .)) -}}true{{- end -}}
{{- end -}}

{{/* Refuses value combinations the schema cannot express, with what to do instead. */}}
{{- define "jrw.validate" -}}
{{- if and .Values.certManager.enabled .Values.tls.caBundle -}}
{{- fail "certManager.enabled and tls.caBundle are exclusive: with cert-manager, cainjector fills the caBundle; unset one of them" -}}
{{- end -}}
{{- if and .Values.certManager.enabled (or .Values.tls.cert .Values.tls.key) -}}
{{- fail "certManager.enabled and tls.cert/tls.key are exclusive: cert-manager writes the Secret; unset one of them" -}}
{{- end -}}
{{- if ne (empty .Values.tls.cert) (empty .Values.tls.key) -}}
{{- fail "tls.cert and tls.key go together: set both (the chart then creates the Secret) or neither (the Secret tls.secretName must exist)" -}}
{{- end -}}
{{- end -}}

{{/*
A webhook's namespaceSelector: never the excluded namespaces (always the release's, so the
webhook can restart itself), the namespace-label opt-in expression (`in-place`: In, NotIn or
empty), then the user's webhook.namespaceSelector. Called with (dict "root" $ "inPlace" OP).
*/}}
{{- define "jrw.namespaceSelector" -}}
{{- $v := .root.Values.webhook -}}
namespaceSelector:
  {{- with $v.namespaceSelector.matchLabels }}
  matchLabels:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ concat $v.excludedNamespaces (list .root.Release.Namespace) | uniq | toJson }}
  {{- with .inPlace }}
  - key: restart.jobset.dev/in-place
    operator: {{ . }}
    values: ["enabled", "true"]
  {{- end }}
  {{- with $v.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* A webhook's clientConfig; called with (dict "root" $ "path" PATH). */}}
{{- define "jrw.clientConfig" -}}
clientConfig:
  service:
    name: jobset-restart-webhook
    namespace: {{ .root.Release.Namespace }}
    path: {{ .path }}
    port: 443
  {{- with .root.Values.tls.caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end -}}
