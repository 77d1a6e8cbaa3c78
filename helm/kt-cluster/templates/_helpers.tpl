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

{{/* Labels of a pod template: its selector, commonLabels, then the component's podLabels:
include "kt-cluster.podLabels" (list . "worker" .Values.workers.podLabels) */}}
{{- define "kt-cluster.podLabels" -}}
{{- $root := index . 0 -}}
{{- $extra := mergeOverwrite (deepCopy ($root.Values.commonLabels | default dict)) (deepCopy (index . 2 | default dict)) -}}
{{- $labels := merge (include "kt-cluster.componentSelector" (list $root (index . 1)) | fromYaml) $extra -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* Images: the GPU image `<repository>:<tag>` and the CPU image `<repository>:<tag>-cpu`, both
built from the Dockerfile, each overridable per component. */}}
{{- define "kt-cluster.imageRef" -}}
{{- $image := index . 0 -}}
{{- $ref := printf "%s:%s" $image.repository $image.tag -}}
{{- if $image.digest }}{{ $ref = printf "%s@%s" $ref $image.digest }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* The chief's image, also the data Job's and the test pod's: the CPU image by default. */}}
{{- define "kt-cluster.chiefImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- $image := .Values.chief.image -}}
{{- include "kt-cluster.imageRef" (list (dict "repository" (default .Values.image.repository $image.repository) "tag" (default (printf "%s-cpu" $tag) $image.tag) "digest" $image.digest)) -}}
{{- end -}}

{{/* The workers' image: the GPU image, or the CPU image when they have no GPU. */}}
{{- define "kt-cluster.workerImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if eq (int .Values.workers.gpus) 0 }}{{ $tag = printf "%s-cpu" $tag }}{{ end -}}
{{- $image := .Values.workers.image -}}
{{- include "kt-cluster.imageRef" (list (dict "repository" (default .Values.image.repository $image.repository) "tag" (default $tag $image.tag) "digest" $image.digest)) -}}
{{- end -}}

{{/* "true" when runAsUser, runAsGroup and fsGroup are left to OpenShift's SCC. */}}
{{- define "kt-cluster.openshift" -}}
{{- $mode := .Values.openshift.adaptSecurityContext -}}
{{- if or (eq $mode "force") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "security.openshift.io/v1")) -}}
true
{{- end -}}
{{- end -}}

{{- define "kt-cluster.podSecurityContext" -}}
{{- $context := deepCopy .Values.podSecurityContext -}}
{{- if include "kt-cluster.openshift" . }}{{ $context = omit $context "runAsUser" "runAsGroup" "fsGroup" }}{{ end -}}
{{- toYaml $context -}}
{{- end -}}

{{- define "kt-cluster.containerSecurityContext" -}}
{{- $context := deepCopy .Values.containerSecurityContext -}}
{{- if include "kt-cluster.openshift" . }}{{ $context = omit $context "runAsUser" "runAsGroup" }}{{ end -}}
{{- toYaml $context -}}
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

{{/*
The workers' replica count. A `helm upgrade` that changes neither `workers.replicas` nor the
search config keeps the live count: zero once the chief has scaled a finished search's workers
down, or what `kubectl scale` set. Offline renders (`helm template`, Argo CD) cannot look the
StatefulSet up and render `workers.replicas`.
*/}}
{{- define "kt-cluster.workerReplicas" -}}
{{- $live := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "kt-cluster.worker" .) -}}
{{- include "kt-cluster.keptReplicas" (dict "live" $live "replicas" .Values.workers.replicas "checksum" (include "kt-cluster.searchConfig" . | sha256sum)) -}}
{{- end -}}

{{/* include "kt-cluster.keptReplicas" (dict "live" <StatefulSet or empty> "replicas" N "checksum" S) */}}
{{- define "kt-cluster.keptReplicas" -}}
{{- $replicas := int .replicas -}}
{{- with .live -}}
{{- $rendered := index (.metadata.annotations | default dict) "kt-cluster/workers-replicas" | default "" -}}
{{- $checksum := index (.spec.template.metadata.annotations | default dict) "checksum/config" | default "" -}}
{{- if and (eq (toString $rendered) (toString $replicas)) (eq $checksum $.checksum) (hasKey .spec "replicas") -}}
{{- $replicas = int .spec.replicas -}}
{{- end -}}
{{- end -}}
{{- $replicas -}}
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

{{/* Volumes shared by the chief and the workers: include "kt-cluster.commonVolumes" (list . .Values.chief) */}}
{{- define "kt-cluster.commonVolumes" -}}
{{- $component := index . 1 -}}
{{- with index . 0 -}}
- name: config
  configMap:
    name: {{ include "kt-cluster.config" . }}
- name: token
  secret:
    secretName: {{ include "kt-cluster.authSecret" . }}
    defaultMode: 0400
    items:
      - key: {{ .Values.auth.secretKey }}
        path: token
- name: data
  {{- if .Values.data.volume }}
  {{- toYaml .Values.data.volume | nindent 2 }}
  {{- else }}
  persistentVolumeClaim:
    claimName: {{ include "kt-cluster.dataClaim" . }}
    readOnly: true
  {{- end }}
- name: results
  persistentVolumeClaim:
    claimName: {{ include "kt-cluster.resultsClaim" . }}
- name: tmp
  emptyDir:
    {{- with $component.tmpSizeLimit }}
    sizeLimit: {{ . | quote }}
    {{- else }} {}
    {{- end }}
{{- with $component.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}
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

{{/*
The dataset gate, the last init container of the chief and of every worker: `ktc data check`
against the search config (classes.txt, every mask, a decoded sample), waiting up to
data.check.waitSeconds for a complete dataset and saying what is missing. Runs after the
component's extraInitContainers, which may be what fills the dataset.
include "kt-cluster.initContainers" (list . .Values.workers (include "kt-cluster.workerImage" .))
*/}}
{{- define "kt-cluster.initContainers" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- with $component.extraInitContainers }}{{ toYaml . }}{{ printf "\n" }}{{ end -}}
- name: check-data
  image: {{ index . 2 }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["ktc", "data", "check", "--config", "/etc/ktc/search.yaml", "--wait", {{ $root.Values.data.check.waitSeconds | quote }}]
  env:
    - name: HOME
      value: /tmp
    - name: PYTHONUNBUFFERED
      value: "1"
  workingDir: /tmp
  resources:
    {{- toYaml $root.Values.data.check.resources | nindent 4 }}
  securityContext:
    {{- include "kt-cluster.containerSecurityContext" $root | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/ktc
      readOnly: true
    - name: data
      mountPath: /data
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Pod spec fields every component may set: include "kt-cluster.podScheduling" .Values.chief */}}
{{- define "kt-cluster.podScheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .schedulerName }}
schedulerName: {{ . }}
{{- end }}
{{- end -}}

{{/*
Probes: include "kt-cluster.probes" (list .Values.chief.probes (dict "startup" $grpc "readiness" $grpc "liveness" $http))
where each handler is a probe handler such as (dict "grpc" (dict "port" 8000)).
*/}}
{{- define "kt-cluster.probes" -}}
{{- $probes := index . 0 -}}
{{- $handlers := index . 1 -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{- $probe := index $probes $kind }}
{{- if $probe.enabled }}
{{ $kind }}Probe:
  {{- toYaml (index $handlers $kind) | nindent 2 }}
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

{{/* How long the processes of a finished search wait for a last scrape: 0 when nothing scrapes. */}}
{{- define "kt-cluster.finalScrapeSeconds" -}}
{{- $m := .Values.monitoring -}}
{{- if or $m.scrapeAnnotations $m.serviceMonitor.enabled -}}
{{- $m.finalScrapeSeconds -}}
{{- else -}}
0
{{- end -}}
{{- end -}}

{{/* Worker processes per pod: trialsPerGPU, times the GPUs when each trial has one to itself. */}}
{{- define "kt-cluster.workerProcesses" -}}
{{- $w := .Values.workers -}}
{{- if and (eq (toString $w.gpusPerTrial) "1") (gt (int $w.gpus) 1) -}}
{{- mul (int $w.trialsPerGPU) (int $w.gpus) -}}
{{- else -}}
{{- int $w.trialsPerGPU -}}
{{- end -}}
{{- end -}}

{{/* Checks the template language can do and the values schema cannot. */}}
{{- define "kt-cluster.validate" -}}
{{- $w := .Values.workers -}}
{{- if lt (float64 $w.terminationGracePeriodSeconds) (addf $w.graceSeconds 5) -}}
{{- fail (printf "workers.terminationGracePeriodSeconds (%v) must be at least workers.graceSeconds (%v) + 5: a worker needs graceSeconds to hand its trial back, then time to exit before it is killed" $w.terminationGracePeriodSeconds $w.graceSeconds) -}}
{{- end -}}
{{- if and (eq (toString $w.gpusPerTrial) "1") (lt (int $w.gpus) 1) -}}
{{- fail "workers.gpusPerTrial: 1 (one GPU per trial) needs workers.gpus >= 1; for several trials per CPU pod set workers.trialsPerGPU" -}}
{{- end -}}
{{- $pdb := .Values.chief.pdb -}}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.minAvailable) (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- fail "chief.pdb: set minAvailable or maxUnavailable when chief.pdb.enabled" -}}
{{- end -}}
{{- $data := .Values.data -}}
{{- if and $data.volume $data.existingClaim -}}
{{- fail "data: set either data.volume or data.existingClaim, not both" -}}
{{- end -}}
{{- if and $data.volume $data.synth.enabled -}}
{{- fail "data.synth.enabled: the data Job fills a claim; it cannot write to data.volume (fill that volume with extraInitContainers instead)" -}}
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
