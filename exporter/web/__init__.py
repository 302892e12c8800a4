"""`--web.config.file`: TLS, client certificates and basic auth in exporter-toolkit's file
format, around the HTTP server (which asks it per connection and per request)."""
