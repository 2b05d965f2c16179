{{/*
Names and labels shared by every template.

The operator's pods carry app.kubernetes.io/name=edgefill-operator whatever
the release is called: the NetworkPolicies the operator renders for cache
nodes admit the operator to their metrics port by exactly that label
(edgefill_operator.names.OPERATOR_APP_NAME), so it is not overridable.
*/}}

{{- define "edgefill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edgefill.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "edgefill.operatorName" -}}
{{- printf "%s-operator" (include "edgefill.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "edgefill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object the chart renders, except the instance label. */}}
{{- define "edgefill.baseLabels" -}}
helm.sh/chart: {{ include "edgefill.chart" . }}
app.kubernetes.io/part-of: edgefill
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels on every object the chart renders. */}}
{{- define "edgefill.labels" -}}
{{ include "edgefill.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector of the operator's pods: immutable on the Deployment, never change it. */}}
{{- define "edgefill.operatorSelectorLabels" -}}
app.kubernetes.io/name: edgefill-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "edgefill.operatorLabels" -}}
{{ include "edgefill.baseLabels" . }}
{{ include "edgefill.operatorSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "edgefill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edgefill.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the ServiceAccount the operator runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image reference: a digest wins over a tag. */}}
{{- define "edgefill.operatorImage" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}{{- $repo = printf "%s/%s" $img.registry $img.repository -}}{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The operator's settings fix the peering name (edgefill_operator.settings). */}}
{{- define "edgefill.peeringName" -}}
edgefill-operator
{{- end -}}

{{/*
CRD-like objects (CRDs and the admission policy that belongs to them) get
the keep annotation when crds.keep is true, so `helm uninstall` leaves them
and with them every EdgeSite and ContentSet.
*/}}
{{- define "edgefill.crdAnnotations" -}}
{{- if .Values.crds.keep }}
helm.sh/resource-policy: keep
{{- end }}
{{- end -}}

{{/*
The CRD documents of files/crds (a verbatim copy of crds/), parsed, with the
chart's labels and the keep annotation merged into their metadata. Parsing
and re-serialising keeps every field: toYaml goes through JSON, whose
numbers stay exact integers below 2^53.
*/}}
{{- define "edgefill.crdDocuments" -}}
{{- $root := . -}}
{{- range $path, $_ := .Files.Glob "files/crds/*.yaml" }}
{{- range $doc := regexSplit "(?m)^---\\s*$" ($root.Files.Get $path) -1 }}
{{- $obj := fromYaml $doc }}
{{- if hasKey $obj "Error" }}
{{- fail (printf "%s: cannot parse: %s" $path (get $obj "Error")) }}
{{- end }}
{{- if $obj }}
{{- $meta := $obj.metadata }}
{{- $labels := merge (fromYaml (include "edgefill.labels" $root)) (default dict $meta.labels) }}
{{- $_ := set $meta "labels" $labels }}
{{- $ann := merge (default dict (fromYaml (include "edgefill.crdAnnotations" $root))) (default dict $meta.annotations) }}
{{- if $ann }}
{{- $_ := set $meta "annotations" $ann }}
{{- end }}
---
{{ toYaml $obj }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
