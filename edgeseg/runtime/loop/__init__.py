"""The live loop: sources (cameras, streams, videos, folders), rendering, latency statistics, the
browser view, and the runner that ties them to a Predictor (edgeseg.runtime.loop.runner)."""
