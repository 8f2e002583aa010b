{{/* Names, labels and the pieces every component shares. */}}

{{- define "stolon.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, prefixed to the chart name unless it already contains it. */}}
{{- define "stolon.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stolon.clusterName" -}}
{{- .Values.clusterName | default (include "stolon.fullname" .) -}}
{{- end -}}

{{- define "stolon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "stolon.labels" -}}
helm.sh/chart: {{ include "stolon.chart" . }}
app.kubernetes.io/name: {{ include "stolon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
stolon-cluster: {{ include "stolon.clusterName" . }}
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "stolon-keeper"). */}}
{{- define "stolon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stolon.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
component: {{ .component }}
{{- end -}}

{{/* Pod labels of one component: the store's discovery needs `component` and `stolon-cluster`. */}}
{{- define "stolon.podLabels" -}}
{{ include "stolon.selectorLabels" . }}
stolon-cluster: {{ include "stolon.clusterName" .root }}
{{- end -}}

{{/* `image` + `imageTag`; the map form of Stolon's later chart (image.repository, image.tag) works too. */}}
{{- define "stolon.image" -}}
{{- if kindIs "map" .Values.image -}}
{{- printf "%s:%s" (required "image.repository is required" .Values.image.repository) (.Values.image.tag | default .Values.imageTag | default .Chart.AppVersion | toString) -}}
{{- else -}}
{{- printf "%s:%s" .Values.image (.Values.imageTag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* Replicas of a component: `replicas`, or `replicaCount` as Stolon's later chart called it. */}}
{{- define "stolon.replicas" -}}
{{- if hasKey . "replicaCount" -}}{{ .replicaCount }}{{- else -}}{{ .replicas }}{{- end -}}
{{- end -}}

{{- define "stolon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "stolon.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "stolon.secretName" -}}
{{- .Values.existingSecret | default (include "stolon.fullname" .) -}}
{{- end -}}

{{- define "stolon.logLevel" -}}
{{- if .Values.debug -}}debug{{- else -}}{{ .Values.logLevel | default "info" }}{{- end -}}
{{- end -}}

{{/*
Store and common flags shared by the four binaries (Stolon's common flags, section 1.4).
kubernetes: --store-backend=kubernetes --kube-resource-kind=configmap;
etcdv3: --store-backend=etcdv3 --store-endpoints=<store.endpoints>.
*/}}
{{- define "stolon.commonArgs" -}}
{{- $backend := .Values.store.backend | toString -}}
- --cluster-name={{ include "stolon.clusterName" . }}
- --store-backend={{ $backend }}
{{- if eq $backend "kubernetes" }}
- --kube-resource-kind={{ .Values.store.kubeResourceKind | default "configmap" }}
{{- else if eq $backend "etcdv3" }}
- --store-endpoints={{ required "store.endpoints is required when store.backend is etcdv3" .Values.store.endpoints }}
{{- if .Values.store.prefix }}
- --store-prefix={{ .Values.store.prefix }}
{{- end }}
{{- else }}
{{- fail (printf "store.backend must be kubernetes or etcdv3, not %q" $backend) }}
{{- end }}
{{- if .Values.store.timeout }}
- --store-timeout={{ .Values.store.timeout }}
{{- end }}
- --log-level={{ include "stolon.logLevel" . }}
{{- end -}}

{{- define "stolon.metricsArgs" -}}
{{- if .Values.metrics.enabled -}}
- --metrics-listen-address=0.0.0.0:{{ .Values.metrics.port }}
{{- end -}}
{{- end -}}

{{/* POD_NAME from the downward API: the kubernetes store patches this pod's annotations. */}}
{{- define "stolon.podNameEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* Scheduling of one component: its own setting if non-empty, else the chart-wide default. */}}
{{- define "stolon.scheduling" -}}
{{- $c := .component -}}
{{- $v := .root.Values -}}
{{- with ($c.nodeSelector | default $v.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($c.affinity | default $v.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with ($c.tolerations | default $v.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{- define "stolon.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Mount path of the certificates given by keeper.client_ssl. */}}
{{- define "stolon.sslDir" -}}/etc/stolon/ssl{{- end -}}

{{/* The cluster spec given to `stolonctl init`, as JSON. */}}
{{- define "stolon.clusterSpec" -}}
{{- $spec := dict "initMode" "new" -}}
{{- $user := deepCopy (.Values.clusterSpec | default dict) -}}
{{- $pg := dict -}}
{{- $ssl := .Values.keeper.client_ssl | default dict -}}
{{- if $ssl.enabled -}}
{{- $dir := include "stolon.sslDir" . -}}
{{- $_ := set $pg "ssl" "on" -}}
{{- $_ := set $pg "ssl_cert_file" (printf "%s/%s" $dir ($ssl.certFile | default "tls.crt")) -}}
{{- $_ := set $pg "ssl_key_file" (printf "%s/%s" $dir ($ssl.keyFile | default "tls.key")) -}}
{{- if $ssl.caFile -}}
{{- $_ := set $pg "ssl_ca_file" (printf "%s/%s" $dir $ssl.caFile) -}}
{{- end -}}
{{- end -}}
{{- range $k, $val := (.Values.pgParameters | default dict) -}}
{{- $_ := set $pg $k (toString $val) -}}
{{- end -}}
{{- range $k, $val := (get $user "pgParameters" | default dict) -}}
{{- $_ := set $pg $k (toString $val) -}}
{{- end -}}
{{- $spec = mergeOverwrite $spec $user -}}
{{- if $pg -}}
{{- $_ := set $spec "pgParameters" $pg -}}
{{- end -}}
{{- toPrettyJson $spec -}}
{{- end -}}

{{/* Fails rendering early on values that cannot work. */}}
{{- define "stolon.validate" -}}
{{- if and .Values.keeper.client_ssl.enabled (not .Values.keeper.client_ssl.certs_secret_name) -}}
{{- fail "keeper.client_ssl.enabled needs keeper.client_ssl.certs_secret_name (a Secret with the server certificate and key)" -}}
{{- end -}}
{{- if and .Values.sentinel.initialClusterSpec .Values.initJob.enabled -}}
{{- fail "sentinel.initialClusterSpec lets the sentinels initialise the cluster: set initJob.enabled=false with it (both would race)" -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9_]+$" (.Values.keeper.uidPrefix | toString)) -}}
{{- fail "keeper.uidPrefix must match ^[a-z0-9_]+$ (keeper UIDs end up in replication slot names)" -}}
{{- end -}}
{{- end -}}
