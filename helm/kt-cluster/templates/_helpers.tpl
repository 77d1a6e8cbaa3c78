{{/*
Names. The full name is at most 40 characters so that `<fullname>-worker-<ordinal>` pod names,
the StatefulSet's revision labels and `<fullname>-client` label keys stay within 63.
*/}}
{{- define "kt-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "kt-cluster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kt-cluster.chief" -}}{{ include "kt-cluster.fullname" . }}-chief{{- end -}}
{{- define "kt-cluster.worker" -}}{{ include "kt-cluster.fullname" . }}-worker{{- end -}}
{{- define "kt-cluster.config" -}}{{ include "kt-cluster.fullname" . }}-config{{- end -}}

{{/* Label that lets a pod reach the chief's gRPC port through the NetworkPolicy. */}}
{{- define "kt-cluster.clientLabel" -}}{{ include "kt-cluster.fullname" . }}-client{{- end -}}

{{- define "kt-cluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kt-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kt-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kt-cluster.labels" -}}
helm.sh/chart: {{ include "kt-cluster.chart" . }}
{{ include "kt-cluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kt-cluster
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: include "kt-cluster.componentLabels" (list . "chief") */}}
{{- define "kt-cluster.componentLabels" -}}
{{ include "kt-cluster.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kt-cluster.componentSelector" -}}
{{ include "kt-cluster.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kt-cluster.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "kt-cluster.chiefServiceAccount" -}}
{{- default (printf "%s-chief" (include "kt-cluster.fullname" .)) .Values.serviceAccount.chiefName -}}
{{- end -}}

{{- define "kt-cluster.workerServiceAccount" -}}
{{- default (printf "%s-worker" (include "kt-cluster.fullname" .)) .Values.serviceAccount.workerName -}}
{{- end -}}

{{- define "kt-cluster.authSecret" -}}
{{- default (printf "%s-auth" (include "kt-cluster.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "kt-cluster.dataClaim" -}}
{{- default (printf "%s-data" (include "kt-cluster.fullname" .)) .Values.data.existingClaim -}}
{{- end -}}

{{- define "kt-cluster.resultsClaim" -}}
{{- default (printf "%s-results" (include "kt-cluster.fullname" .)) .Values.results.existingClaim -}}
{{- end -}}

{{/* The search config file, shared by the chief and the workers. */}}
{{- define "kt-cluster.searchConfig" -}}
{{- $search := deepCopy .Values.search -}}
{{- if not $search.search_id -}}
{{- $_ := set $search "search_id" (include "kt-cluster.fullname" .) -}}
{{- end -}}
{{- $_ := set $search "results" "/results" -}}
{{- $_ := set $search.data "path" "/data" -}}
{{- toYaml $search -}}
{{- end -}}

{{/* Pod annotation that rolls the pods when the search config changes (and only then). */}}
{{- define "kt-cluster.configChecksum" -}}
checksum/config: {{ include "kt-cluster.searchConfig" . | sha256sum }}
{{- end -}}

{{- define "kt-cluster.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Environment of the chief and the workers. */}}
{{- define "kt-cluster.commonEnv" -}}
- name: HOME
  value: /tmp
- name: KERAS_HOME
  value: /tmp/.keras
- name: PYTHONUNBUFFERED
  value: "1"
- name: TF_CPP_MIN_LOG_LEVEL
  value: "2"
{{- if .Values.neptune.enabled }}
- name: NEPTUNE_PROJECT
  value: {{ .Values.neptune.project | quote }}
- name: NEPTUNE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.neptune.existingSecret }}
      key: {{ .Values.neptune.secretKey }}
{{- end }}
{{- end -}}

{{/* Volumes shared by the chief and the workers. */}}
{{- define "kt-cluster.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "kt-cluster.config" . }}
- name: token
  secret:
    secretName: {{ include "kt-cluster.authSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.secretKey }}
        path: token
- name: data
  persistentVolumeClaim:
    claimName: {{ include "kt-cluster.dataClaim" . }}
    readOnly: true
- name: results
  persistentVolumeClaim:
    claimName: {{ include "kt-cluster.resultsClaim" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "kt-cluster.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/ktc
  readOnly: true
- name: token
  mountPath: /var/run/ktc
  readOnly: true
- name: data
  mountPath: /data
  readOnly: true
- name: results
  mountPath: /results
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Probes on a metrics port: include "kt-cluster.probes" (list .Values.chief.probes "metrics") */}}
{{- define "kt-cluster.probes" -}}
{{- $probes := index . 0 -}}
{{- $port := index . 1 -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{- $probe := index $probes $kind }}
{{- if $probe.enabled }}
{{ $kind }}Probe:
  httpGet:
    path: /metrics
    port: {{ $port }}
  {{- toYaml (omit $probe "enabled") | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Prometheus scrape annotations, when no ServiceMonitor scrapes the pods. */}}
{{- define "kt-cluster.scrapeAnnotations" -}}
{{- $root := index . 0 -}}
{{- if and $root.Values.monitoring.scrapeAnnotations (not $root.Values.monitoring.serviceMonitor.enabled) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Checks the template language can do and the values schema cannot. */}}
{{- define "kt-cluster.validate" -}}
{{- $w := .Values.workers -}}
{{- if lt (float64 $w.terminationGracePeriodSeconds) (addf $w.graceSeconds 5) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%v) must be at least workers.graceSeconds (%v) + 5: a worker needs graceSeconds to hand its trial back, then time to exit before it is killed" $w.terminationGracePeriodSeconds $w.graceSeconds) -}}
{{- end -}}
{{- $pdb := .Values.chief.pdb -}}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- fail "chief.pdb: set minAvailable or maxUnavailable when chief.pdb.enabled" -}}
{{- end -}}
{{- end -}}

{{/* The peers allowed to scrape metrics ("" when none): include "kt-cluster.metricsPeer" .Values */}}
{{- define "kt-cluster.metricsPeer" -}}
{{- $np := .networkPolicy -}}
{{- if or $np.metricsNamespaceSelector $np.metricsNamespaces -}}
- namespaceSelector:
    {{- if $np.metricsNamespaceSelector }}
    {{- toYaml $np.metricsNamespaceSelector | nindent 4 }}
    {{- else }}
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml $np.metricsNamespaces | nindent 10 }}
    {{- end }}
  {{- with $np.metricsPodSelector }}
  podSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
