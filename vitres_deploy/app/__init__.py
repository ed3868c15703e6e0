"""Application layer: jobs that chain the pipeline's stages end to end (the demo), called by the CLI."""
