{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "exchange.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exchange.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", kept a valid DNS label. Call with (list $ "suffix"). */}}
{{- define "exchange.component.fullname" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "exchange.fullname" $ctx) (index . 1) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exchange.engine.name" -}}
{{- include "exchange.component.fullname" (list .ctx (printf "engine-%s" (lower .pair.symbol))) }}
{{- end }}

{{- define "exchange.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "exchange.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "exchange.secretName" -}}
{{- default (include "exchange.component.fullname" (list . "secrets")) .Values.secrets.existingSecret }}
{{- end }}

{{/* Labels: call with (dict "ctx" $ "component" "api"). ---------------------------------- */}}

{{- define "exchange.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exchange.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "exchange.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "exchange.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: exchange
{{- end }}

{{/* Images --------------------------------------------------------------------------- */}}

{{- define "exchange.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Pairs ------------------------------------------------------------------------------
The pairs file every service reads (EXCHANGE_PAIRS_FILE), in the format of the packaged
services/common/default_pairs.toml. What the schema cannot say is checked here. */}}

{{- define "exchange.pairsToml" -}}
{{- $seen := dict }}
{{- range .Values.pairs }}
{{- if hasKey $seen .symbol }}
{{- fail (printf "pairs: %s is listed twice" .symbol) }}
{{- end }}
{{- $_ := set $seen .symbol true }}
{{- range (splitList "-" .symbol) }}
{{- if not (hasKey $.Values.assets .) }}
{{- fail (printf "pairs: asset %s is not in assets" .) }}
{{- end }}
{{- end }}
{{- end -}}
# Rendered from the chart's values (assets, pairs).
[assets]
{{- range $symbol, $asset := .Values.assets }}
{{ $symbol }} = { decimals = {{ int $asset.decimals }} }
{{- end }}
{{- range $pair := .Values.pairs }}

[[pairs]]
symbol = {{ $pair.symbol | quote }}
{{- range $key := list "tick_size" "lot_size" "min_qty" "max_qty" "min_notional" }}
{{ $key }} = {{ get $pair $key | quote }}
{{- end }}
{{- range $key := list "price_decimals" "qty_decimals" "market_band_bps" "price_band_bps" "maker_fee_bps" "taker_fee_bps" }}
{{- if hasKey $pair $key }}
{{ $key }} = {{ get $pair $key | int }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}

{{/* Rolls every pod that reads the pairs file when it changes. */}}
{{- define "exchange.configChecksum" -}}
checksum/config: {{ include "exchange.pairsToml" . | sha256sum }}
{{- end }}

{{/* Redis ------------------------------------------------------------------------------ */}}

{{- define "exchange.redis.fullname" -}}
{{- include "exchange.component.fullname" (list . "redis") }}
{{- end }}

{{- define "exchange.redis.headless" -}}
{{- include "exchange.component.fullname" (list . "redis-headless") }}
{{- end }}

{{- define "exchange.redis.nodeCount" -}}
{{- mul .Values.redis.masters (add 1 .Values.redis.replicasPerMaster) }}
{{- end }}

{{/* "host:port" of every node, by its stable DNS name. */}}
{{- define "exchange.redis.nodes" -}}
{{- $nodes := list }}
{{- range $i := until (int (include "exchange.redis.nodeCount" .)) }}
{{- $nodes = append $nodes (printf "%s-%d.%s.%s.svc.%s:%d" (include "exchange.redis.fullname" $) $i (include "exchange.redis.headless" $) $.Release.Namespace $.Values.clusterDomain (int $.Values.redis.port)) }}
{{- end }}
{{- join " " $nodes }}
{{- end }}

{{/* REDIS_URL as a container env entry. */}}
{{- define "exchange.env.redisUrl" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:%d" (include "exchange.redis.fullname" .) (int .Values.redis.port) | quote }}
{{- else if .Values.redis.external.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.existingSecretKey }}
{{- else if .Values.redis.external.url }}
  value: {{ .Values.redis.external.url | quote }}
{{- else }}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret" }}
{{- end }}
{{- end }}

{{/* What every service reads: Redis, the pairs file, the log level. */}}
{{- define "exchange.env.common" -}}
{{ include "exchange.env.redisUrl" . }}
- name: EXCHANGE_PAIRS_FILE
  value: /etc/exchange/pairs.toml
- name: EXCHANGE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
# Spans go to the chart's collector over OTLP/HTTP when it runs; empty: not exported.
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ ternary (printf "http://%s:4318" (include "exchange.component.fullname" (list . "collector"))) "" .Values.observability.collector.enabled | quote }}
# Span files are for a single machine (`exchange trace`); in a cluster, the collector.
- name: EXCHANGE_TRACE_DIR
  value: ""
{{- end }}

{{- define "exchange.env.secretsKey" -}}
- name: EXCHANGE_SECRETS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "exchange.secretName" . }}
      key: {{ .Values.secrets.secretsKeyKey }}
{{- end }}

{{- define "exchange.env.adminToken" -}}
- name: EXCHANGE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "exchange.secretName" . }}
      key: {{ .Values.secrets.adminTokenKey }}
{{- end }}

{{/* Pods ------------------------------------------------------------------------------- */}}

{{- define "exchange.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "exchange.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* The pairs file and a writable /tmp (the root filesystem is read-only). */}}
{{- define "exchange.volumeMounts" -}}
- name: pairs
  mountPath: /etc/exchange
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{- define "exchange.volumes" -}}
- name: pairs
  configMap:
    name: {{ include "exchange.component.fullname" (list . "pairs") }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* Engine and settlement serve no HTTP. Ready: Redis answers with the pod's own
credentials. Alive: the service process (PID 1) is neither a zombie nor stopped. */}}
{{- define "exchange.workerProbes" -}}
readinessProbe:
  exec:
    command:
      - python
      - -c
      - "import os, redis; redis.Redis.from_url(os.environ['REDIS_URL'], socket_timeout=3).ping()"
  initialDelaySeconds: 5
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  exec:
    command: ["/bin/sh", "-c", "! grep -Eq '^State:[[:space:]]+[ZT]' /proc/1/status"]
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 3
{{- end }}

{{/* Metrics of the engines and settlement, which serve no other HTTP: the port as env and
as a named container port (what the PodMonitor and the NetworkPolicy refer to). */}}
{{- define "exchange.metrics.env" -}}
- name: EXCHANGE_METRICS_PORT
  value: {{ .Values.metrics.port | int | quote }}
{{- end }}

{{- define "exchange.metrics.port" -}}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
{{- end }}

{{/* Pod annotations for a Prometheus that finds its targets by annotation rather than by
ServiceMonitor/PodMonitor. Call with (list $ port). */}}
{{- define "exchange.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ index . 1 | int | quote }}
prometheus.io/path: {{ (index . 0).Values.observability.serviceMonitor.path | quote }}
{{- end }}

{{/* Spread a component's pods over nodes: call with (dict "ctx" $ "component" "api"). */}}
{{- define "exchange.spread" -}}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "exchange.selectorLabels" . | nindent 14 }}
{{- end }}

{{- define "exchange.publicWsUrl" -}}
{{- if .Values.api.publicWsUrl }}
{{- .Values.api.publicWsUrl }}
{{- else if .Values.ingress.enabled }}
{{- printf "%s://%s/ws" (ternary "wss" "ws" (ne .Values.ingress.tlsSecretName "")) .Values.ingress.host }}
{{- else }}
{{- printf "ws://localhost:%d/ws" (int .Values.gateway.service.port) }}
{{- end }}
{{- end }}

{{- define "exchange.redis.conf" -}}
# Rendered from the chart's values (redis).
cluster-enabled yes
# In the data directory start.sh gives (the pod's volume).
cluster-config-file nodes.conf
cluster-node-timeout {{ .Values.redis.nodeTimeoutMs | int }}
# Clients get each node's stable DNS name: pod IPs change at every restart.
cluster-preferred-endpoint-type hostname
appendonly yes
appendfsync {{ .Values.redis.appendfsync }}
save ""
bind * -::*
protected-mode no
{{- end }}

{{/* The Redis ConfigMap's data: the server config and the scripts in files/redis. */}}
{{- define "exchange.redis.configData" -}}
redis.conf: |
  {{- include "exchange.redis.conf" . | nindent 2 }}
{{- range $path, $_ := .Files.Glob "files/redis/*.sh" }}
{{ base $path }}: |
  {{- $.Files.Get $path | nindent 2 }}
{{- end }}
{{- end }}
