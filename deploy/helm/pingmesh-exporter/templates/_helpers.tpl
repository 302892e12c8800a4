{{/*
Names and labels. The defaults are the kustomize base's, so that `helm template` with no
values renders the base's objects exactly: no release name in the names and no Helm labels
(Helm marks what it installs with its own annotations).
*/}}
{{- define "pingmesh-exporter.name" -}}pingmesh-exporter{{- end -}}

{{- define "pingmesh-exporter.fullname" -}}
{{- .Values.fullnameOverride | default (include "pingmesh-exporter.name" .) | trunc 56 | trimSuffix "-" -}}
{{- end -}}

{{- define "pingmesh-exporter.namespace" -}}{{ .Values.namespace.name }}{{- end -}}

{{- define "pingmesh-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pingmesh-exporter.name" . }}
{{- end -}}

{{- define "pingmesh-exporter.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The web config is on when a Secret is named or content given; never both. */}}
{{- define "pingmesh-exporter.webConfigOn" -}}
{{- if and .Values.webConfig.existingSecret .Values.webConfig.content -}}
{{- fail "webConfig: set existingSecret or content, not both" -}}
{{- end -}}
{{- if or .Values.webConfig.existingSecret .Values.webConfig.content -}}true{{- end -}}
{{- end -}}

{{- define "pingmesh-exporter.webConfigSecret" -}}
{{- .Values.webConfig.existingSecret | default (printf "%s-web-config" (include "pingmesh-exporter.fullname" .)) -}}
{{- end -}}

{{- define "pingmesh-exporter.scheme" -}}
{{- if .Values.webConfig.tls -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/*
The DaemonSet, for the pod network (host=false, the base's deploy/base/daemonset.yaml) or
the host network (host=true, deploy/overlays/host-network/daemonset.yaml). One template, so
that image, resources, tolerations and the rest apply to both, as the overlay repeats the
base.
*/}}
{{- define "pingmesh-exporter.daemonset" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $host := .host -}}
{{- $name := include "pingmesh-exporter.fullname" $root -}}
{{- $port := ternary ($v.hostNetwork.port | int) 9871 $host -}}
{{- $web := include "pingmesh-exporter.webConfigOn" $root -}}
{{- $labels := dict "app.kubernetes.io/name" (include "pingmesh-exporter.name" $root) -}}
{{- if $host -}}
{{- $_ := set $labels "app.kubernetes.io/component" "host-network" -}}
{{- end -}}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ $host | ternary (printf "%s-host" $name) $name }}
  namespace: {{ $host | ternary $v.hostNetwork.namespace (include "pingmesh-exporter.namespace" $root) }}
  labels:
    {{- toYaml $labels | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- toYaml $labels | nindent 6 }}
  updateStrategy:
    {{- toYaml $v.updateStrategy | nindent 4 }}
  template:
    metadata:
      labels:
        {{- toYaml (merge (dict) $labels $v.podLabels) | nindent 8 }}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ $port | quote }}
        prometheus.io/path: /metrics
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- if $host }}
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      serviceAccountName: {{ $name }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- if $host }}
        # A hostNetwork pod cannot set net.ipv4.ping_group_range: the node's value applies,
        # and raw sockets need NET_RAW in effect, which only root holds (README, "Host
        # network mode").
        runAsNonRoot: false
        runAsUser: 0
        runAsGroup: 0
        {{- else }}
        runAsNonRoot: true
        runAsUser: 65534
        runAsGroup: 65534
        {{- end }}
        seccompProfile:
          type: RuntimeDefault
        {{- if not $host }}
        sysctls:
          # Datagram ICMP for every group: echo without CAP_NET_RAW (a safe sysctl).
          - name: net.ipv4.ping_group_range
            value: "0 2147483647"
        {{- end }}
      terminationGracePeriodSeconds: 10
      containers:
        - name: exporter
          image: {{ include "pingmesh-exporter.image" $root }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          args:
            - --discovery=kubernetes
            {{- if $host }}
            - --probe.socket=auto
            - --mesh.source-network=host
            - --mesh.zones
            # Its own pods only: the pod-network exporters are another mesh.
            - --kubernetes.peer-selector=app.kubernetes.io/name={{ include "pingmesh-exporter.name" $root }},app.kubernetes.io/component=host-network
            # The pod-network exporters check the Services; twice would double every alert.
            - --services=false
            - --web.listen-address=:{{ $port }}
            {{- else }}
            - --probe.socket=datagram
            - --mesh.zones
            {{- end }}
            - --log.format=json
            {{- if $web }}
            - --web.config.file={{ $v.webConfig.mountPath }}/{{ $v.webConfig.key }}
            {{- if $v.webConfig.authExemptProbes }}
            - --web.auth-exempt-probes
            {{- end }}
            {{- end }}
            {{- range $v.extraArgs }}
            - {{ . | quote }}
            {{- end }}
            {{- if $host }}
            {{- range $v.hostNetwork.extraArgs }}
            - {{ . | quote }}
            {{- end }}
            {{- end }}
          env:
            - name: NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: POD_IPS
              valueFrom:
                fieldRef:
                  fieldPath: status.podIPs
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $port }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
              {{- if $v.webConfig.tls }}
              scheme: HTTPS
              {{- end }}
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
              {{- if $v.webConfig.tls }}
              scheme: HTTPS
              {{- end }}
            periodSeconds: 5
          {{- with $v.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            {{- if $host }}
            capabilities:
              drop: ["ALL"]
              add: ["NET_RAW"]
            {{- else }}
            runAsNonRoot: true
            capabilities:
              drop: ["ALL"]
            {{- end }}
          {{- if $web }}
          volumeMounts:
            - name: web-config
              mountPath: {{ $v.webConfig.mountPath }}
              readOnly: true
          {{- end }}
      {{- if $web }}
      volumes:
        - name: web-config
          secret:
            secretName: {{ include "pingmesh-exporter.webConfigSecret" $root }}
      {{- end }}
{{- end -}}
