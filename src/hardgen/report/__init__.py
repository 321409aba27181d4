"""Layer 11, the report: tables, plots, the gallery, benchmark.md and the HTML report's inputs."""
