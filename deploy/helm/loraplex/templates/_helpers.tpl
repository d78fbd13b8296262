{{/* Names and labels. Kept to the Go-template subset that tests/deploy/gotemplate.py renders. */}}
{{- define "loraplex.fullname" -}}
{{- if contains "loraplex" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-loraplex" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loraplex.labels" -}}
app.kubernetes.io/name: loraplex
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "loraplex.selector" -}}
app.kubernetes.io/name: loraplex
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loraplex.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The upstream charts' service names: <release>-nats, <release>-redis (their fullname rule). */}}
{{- define "loraplex.natsUrl" -}}
{{- if and .Values.nats.enabled (contains "nats" .Release.Name) -}}
{{- printf "nats://%s:4222" .Release.Name -}}
{{- else if .Values.nats.enabled -}}
{{- printf "nats://%s-nats:4222" .Release.Name -}}
{{- else -}}
{{- required "nats.enabled is false: set externalNats.url" .Values.externalNats.url -}}
{{- end -}}
{{- end -}}

{{- define "loraplex.redisHost" -}}
{{- if contains "redis" .Release.Name -}}{{ .Release.Name }}{{- else -}}{{ printf "%s-redis" .Release.Name }}{{- end -}}
{{- end -}}

{{/* LORAPLEX_NATS_URL and LORAPLEX_REDIS_URL, read by every service as its flags' defaults. */}}
{{- define "loraplex.busEnv" -}}
- name: LORAPLEX_NATS_URL
  value: {{ include "loraplex.natsUrl" . | quote }}
{{- if .Values.redis.enabled }}
- name: LORAPLEX_REDIS_URL
{{- if .Values.redis.sentinel.enabled }}
  value: {{ printf "redis+sentinel://%s:26379/%s/0" (include "loraplex.redisHost" .) .Values.redis.sentinel.masterSet | quote }}
{{- else }}
  value: {{ printf "redis://%s-master:6379/0" (include "loraplex.redisHost" .) | quote }}
{{- end }}
{{- else if .Values.externalRedis.existingSecret }}
- name: LORAPLEX_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: url
{{- else }}
- name: LORAPLEX_REDIS_URL
  value: {{ required "redis.enabled is false: set externalRedis.url or externalRedis.existingSecret" .Values.externalRedis.url | quote }}
{{- end }}
- name: LORAPLEX_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{- define "loraplex.tenantsSecret" -}}
{{- if .Values.tenants.existingSecret -}}
{{- .Values.tenants.existingSecret -}}
{{- else -}}
{{- printf "%s-tenants" (include "loraplex.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Volumes every loraplex pod gets: writable scratch (the root filesystem is read-only: /tmp,
the home with Triton's kernel cache) and the tenants Secret. */}}
{{- define "loraplex.baseVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
- name: tenants
  secret:
    secretName: {{ include "loraplex.tenantsSecret" . }}
    items:
      - key: {{ .Values.tenants.key }}
        path: tenants.yaml
{{- end -}}

{{- define "loraplex.modelVolume" -}}
- name: model
{{ toYaml .Values.model.volume | indent 2 }}
{{- end -}}

{{- define "loraplex.baseMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/loraplex
- name: tenants
  mountPath: /etc/loraplex
  readOnly: true
{{- end -}}

{{- define "loraplex.modelMount" -}}
- name: model
  mountPath: /models/model
  readOnly: true
{{- if .Values.model.subPath }}
  subPath: {{ .Values.model.subPath }}
{{- end }}
{{- end -}}

{{/* Pod-level settings every loraplex pod shares. */}}
{{- define "loraplex.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml .Values.podSecurityContext | indent 2 }}
{{- end -}}

{{/* Prometheus scrape annotations for a pod whose /metrics is on port .port */}}
{{- define "loraplex.scrapeAnnotations" -}}
{{- if .root.Values.metrics.annotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end -}}
{{- end -}}

{{/* HTTP probes on a port: (dict "port" 8004 "startup" .Values.workers.startupProbe) */}}
{{- define "loraplex.probes" -}}
{{- if .startup }}
startupProbe:
  httpGet: {path: /health, port: {{ .port | int }}}
  periodSeconds: {{ .startup.periodSeconds | int }}
  failureThreshold: {{ .startup.failureThreshold | int }}
{{- end }}
livenessProbe:
  httpGet: {path: /health, port: {{ .port | int }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /ready, port: {{ .port | int }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}
