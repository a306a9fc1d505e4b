{{- define "sps.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "sps.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "sps.labels" -}}
app.kubernetes.io/name: {{ include "sps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "sps.image" -}}
{{ .root.Values.image.repository }}/{{ .name }}:{{ .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}
{{- /* The namespace of the configuration bundles; never the release namespace (see values.yaml). */ -}}
{{- define "sps.configNamespace" -}}
{{- $ns := .Values.configNamespace.name | default (printf "%s-config" .Release.Namespace) -}}
{{- if eq $ns .Release.Namespace -}}
{{- fail "configNamespace.name must differ from the release namespace: the agents may read every Secret in it" -}}
{{- end -}}
{{- if gt (len $ns) 63 -}}
{{- fail (printf "configNamespace %q is longer than 63 characters; set configNamespace.name" $ns) -}}
{{- end -}}
{{- $ns -}}
{{- end -}}
{{- /* The job label of a component's targets, the same for ServiceMonitors and PodMonitors, so the
alert rules select the same series whichever does the scraping; node names the node in alerts. */ -}}
{{- define "sps.monitorRelabelings" -}}
relabelings:
  - {action: replace, targetLabel: job, replacement: {{ . }}}
  - {action: replace, sourceLabels: [__meta_kubernetes_pod_node_name], targetLabel: node}
{{- end -}}
