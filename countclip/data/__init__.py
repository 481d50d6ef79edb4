"""The dataset build's Ray Data stages and their helpers: captions, fetch (and its HTTP guard), verify (and the noun vocabulary), staging, shards, training ingest."""
