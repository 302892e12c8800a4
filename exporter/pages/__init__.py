"""The mesh page: this exporter's own view on /, the cluster matrix on /mesh assembled from the
peers' /api/v1/view, and how those views are fetched."""
