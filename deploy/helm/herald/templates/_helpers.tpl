{{/* Names and labels. 52 characters at most: a StatefulSet's name goes into its pods'
controller-revision-hash label with 11 more, and labels stop at 63. */}}
{{- define "herald.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "herald.labels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "herald.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The Secret mounted as HERALD_SECRETS_DIR, or nothing. */}}
{{- define "herald.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if .Values.secrets.values -}}
{{- printf "%s-secrets" (include "herald.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment variable's text. Helm reads numbers of a values file as
floats, which print as 2.097152e+06: whole ones are printed as integers. */}}
{{- define "herald.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{- define "herald.secretsDir" -}}/run/secrets/herald{{- end -}}

{{/*
Values that would render valid manifests of a Herald that cannot work. values.schema.json
checks each value alone; these checks relate values to each other and to how Herald runs.
*/}}
{{- define "herald.validate" -}}
{{- $v := .Values -}}
{{- range $key := list "HERALD_KAFKA__BOOTSTRAP_SERVERS" "HERALD_KAFKA__GROUP_ID" "HERALD_KAFKA__TRANSACTIONAL_ID" "HERALD_PROCESSING__SHUTDOWN_TIMEOUT_S" "HERALD_HTTP__HOST" "HERALD_HTTP__PORT" "HERALD_PUBLIC__ENABLED" "HERALD_PUBLIC__HOST" "HERALD_PUBLIC__PORT" "HERALD_SECRETS_DIR" -}}
{{- if hasKey $v.config $key -}}
{{- fail (printf "config.%s: the chart sets it (see kafka, shutdownTimeoutSeconds, httpPort, public, secrets in values.yaml); remove it from config" $key) -}}
{{- end -}}
{{- end -}}
{{- $backend := index $v.config "HERALD_IDEMPOTENCY__BACKEND" | default "sqlite" -}}
{{- $most := ternary $v.autoscaling.maxReplicaCount $v.replicaCount $v.autoscaling.enabled | int -}}
{{- if and (gt $most 1) (ne $backend "redis") -}}
{{- fail (printf "up to %d instances need config.HERALD_IDEMPOTENCY__BACKEND=redis: with %s, an instance that takes over a partition resends what the previous owner sent" $most $backend) -}}
{{- end -}}
{{- if and (eq $backend "sqlite") (not $v.persistence.enabled) -}}
{{- fail "the SQLite idempotency store needs persistence.enabled: without a volume it is lost at every restart, and redelivered records are sent again" -}}
{{- end -}}
{{- if gt $most ($v.kafka.partitions | int) -}}
{{- fail (printf "%s (%d) exceeds kafka.partitions (%d): instances beyond the partition count receive nothing" (ternary "autoscaling.maxReplicaCount" "replicaCount" $v.autoscaling.enabled) $most ($v.kafka.partitions | int)) -}}
{{- end -}}
{{- if $v.autoscaling.enabled -}}
{{- if gt ($v.autoscaling.minReplicaCount | int) ($v.autoscaling.maxReplicaCount | int) -}}
{{- fail "autoscaling.minReplicaCount exceeds autoscaling.maxReplicaCount" -}}
{{- end -}}
{{- if not $v.autoscaling.topics -}}
{{- fail "autoscaling.topics: list the input topics to scale on (not the retry topics: their lag is mail waiting for its round)" -}}
{{- end -}}
{{- end -}}
{{- if and $v.secrets.existingSecret $v.secrets.values -}}
{{- fail "secrets: set existingSecret or values, not both" -}}
{{- end -}}
{{- if and $v.secrets.values (not (hasKey $v.secrets.values "HERALD_POLICY__ADDRESS_KEY")) -}}
{{- fail "secrets.values: HERALD_POLICY__ADDRESS_KEY is missing; Herald does not start without it (a random secret of 32 bytes or more, kept: it keys the suppression digests)" -}}
{{- end -}}
{{- if and $v.public.ingress.enabled (not $v.public.ingress.host) -}}
{{- fail "public.ingress.host: the host of the one-click links (HERALD_LINKS__UNSUBSCRIBE_URL's) is needed for the Ingress" -}}
{{- end -}}
{{- if and $v.public.ingress.enabled (not $v.public.enabled) -}}
{{- fail "public.ingress.enabled needs public.enabled: the Ingress would route to no listener" -}}
{{- end -}}
{{- end -}}
