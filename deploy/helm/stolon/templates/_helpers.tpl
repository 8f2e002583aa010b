{{/* Names, labels and the pieces every component shares. */}}

{{/* The chart's name, or `nameOverride`. */}}
{{- define "stolon.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, suffixed with the (overridden) chart name unless it already
contains it. */}}
{{- define "stolon.fullname" -}}
{{- $name := include "stolon.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-<keeper|sentinel|proxy|init>, the suffix
replaced by the component's `nameOverride`; call with (dict "root" $ "component" "keeper"). */}}
{{- define "stolon.componentName" -}}
{{- $c := get .root.Values .component | default dict -}}
{{- printf "%s-%s" (include "stolon.fullname" .root) ($c.nameOverride | default .component) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Ports: the component's own key, else the community chart's `ports`, else 5432. */}}
{{- define "stolon.keeperPort" -}}
{{- .Values.keeper.pgPort | default .Values.ports.internalPort | default 5432 -}}
{{- end -}}
{{- define "stolon.proxyPort" -}}
{{- .Values.proxy.port | default .Values.ports.internalPort | default 5432 -}}
{{- end -}}
{{- define "stolon.proxyServicePort" -}}
{{- .Values.proxy.service.port | default .Values.ports.externalPort | default 5432 -}}
{{- end -}}

{{/* Keeper UID prefix: `keeper.uid_prefix` (community chart) or `keeper.uidPrefix`. */}}
{{- define "stolon.uidPrefix" -}}
{{- .Values.keeper.uid_prefix | default .Values.keeper.uidPrefix | default "keeper" -}}
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

{{/* ServiceAccount of one component (dict "root" $ "component" "keeper"): its own, named like
its objects, when serviceAccount.create; else serviceAccount.name (shared, granted by you). */}}
{{- define "stolon.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "stolon.componentName" . -}}
{{- else -}}
{{- .root.Values.serviceAccount.name | default "default" -}}
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

{{/* Scheduling of one component: its own setting if non-empty, else the chart-wide default.
Call with (dict "root" $ "component" $values "name" "stolon-keeper" "spread" true): with `spread`
and no affinity given, a preferred pod anti-affinity on the node and a topology spread over zones
(podAntiAffinity: soft | hard | off; topologySpread.enabled). */}}
{{- define "stolon.scheduling" -}}
{{- $c := .component -}}
{{- $v := .root.Values -}}
{{- with ($c.nodeSelector | default $v.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $affinity := $c.affinity | default $v.affinity }}
{{- if $affinity }}
affinity:
  {{- toYaml $affinity | nindent 2 }}
{{- else if and .spread (ne ($v.podAntiAffinity | toString) "off") }}
{{- /* Preferred, not required: a cluster with fewer nodes than replicas still schedules. */}}
affinity:
  podAntiAffinity:
    {{- if eq ($v.podAntiAffinity | toString) "hard" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "stolon.selectorLabels" (dict "root" .root "component" .name) | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "stolon.selectorLabels" (dict "root" .root "component" .name) | nindent 14 }}
    {{- end }}
{{- end }}
{{- if .spread }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- else }}
{{- if $v.topologySpread.enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: {{ $v.topologySpread.topologyKey }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "stolon.selectorLabels" (dict "root" .root "component" .name) | nindent 8 }}
{{- end }}
{{- end }}
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
{{- /* "true" when failsafe mode is on, "" otherwise. */ -}}
{{- define "stolon.failsafe" -}}
{{- if (.Values.failsafe | default dict).enabled -}}true{{- end -}}
{{- end -}}

{{- define "stolon.clusterSpec" -}}
{{- $spec := dict "initMode" "new" -}}
{{- if include "stolon.failsafe" . -}}
{{- $_ := set $spec "failsafeMode" true -}}
{{- end -}}
{{- $user := deepCopy (.Values.clusterSpec | default dict) -}}
{{- $pg := dict -}}
{{- $ssl := .Values.keeper.client_ssl | default dict -}}
{{- if $ssl.enabled -}}
{{- $dir := include "stolon.sslDir" . -}}
{{- $_ := set $pg "ssl" "on" -}}
{{- if $ssl.certFile -}}
{{- $_ := set $pg "ssl_cert_file" (printf "%s/%s" $dir $ssl.certFile) -}}
{{- $_ := set $pg "ssl_key_file" (printf "%s/%s" $dir ($ssl.keyFile | default "tls.key")) -}}
{{- else -}}
{{- /* Key names found at pod start (tls.* or server.*), see the keeper's command. */ -}}
{{- $_ := set $pg "ssl_cert_file" "/run/stolon/ssl/server.crt" -}}
{{- $_ := set $pg "ssl_key_file" "/run/stolon/ssl/server.key" -}}
{{- end -}}
{{- if $ssl.caFile -}}
{{- $_ := set $pg "ssl_ca_file" (printf "%s/%s" $dir $ssl.caFile) -}}
{{- end -}}
{{- end -}}
{{- if .Values.slow_queries.enabled -}}
{{- $_ := set $pg "log_min_duration_statement" (toString (.Values.slow_queries.min_duration | default 300)) -}}
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
{{- if not (regexMatch "^[a-z0-9_]+$" (include "stolon.uidPrefix" .)) -}}
{{- fail "keeper.uidPrefix (keeper.uid_prefix) must match ^[a-z0-9_]+$ (keeper UIDs end up in replication slot names)" -}}
{{- end -}}
{{- if .Values.initJob.force -}}
{{- fail "initJob.force is not supported: the init Job only ever creates cluster data that is absent (stolonctl init --if-absent); to re-initialise a cluster on purpose run `stolonctl init` by hand" -}}
{{- end -}}
{{- if .Values.keeper.serviceType -}}
{{- fail "keeper.serviceType is not supported: the keeper Service is headless (the StatefulSet's pod DNS names); for read-only clients set proxy.readOnly.enabled=true and proxy.readOnly.service.type" -}}
{{- end -}}
{{- if and (include "stolon.failsafe" .) (not .Values.metrics.enabled) -}}
{{- fail "failsafe.enabled needs metrics.enabled: the keepers answer failsafe requests on their metrics listener" -}}
{{- end -}}
{{- if not (has (.Values.podAntiAffinity | toString) (list "soft" "hard" "off")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or off, not %q" (.Values.podAntiAffinity | toString)) -}}
{{- end -}}
{{- end -}}
