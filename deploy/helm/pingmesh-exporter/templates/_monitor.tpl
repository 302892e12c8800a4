{{/*
The scrape endpoint both monitors share: the job the alert rules expect, then the user's
relabelings; HTTPS when the web config serves TLS.
*/}}
{{- define "pingmesh-exporter.endpoint" -}}
{{- $m := .monitor -}}
- port: metrics
  interval: {{ $m.interval }}
  {{- with $m.scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  {{- if .root.Values.webConfig.tls }}
  scheme: https
  {{- end }}
  {{- with $m.tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $m.basicAuth }}
  basicAuth:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  # The alert rules expect this job name.
  relabelings:
    - targetLabel: job
      replacement: {{ include "pingmesh-exporter.name" .root }}
    {{- with $m.relabelings }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $m.metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
