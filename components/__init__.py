"""KFP lightweight components, one per pipeline step: thin wrappers that import the step inside their body."""
