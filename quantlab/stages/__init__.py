"""The lab's stages, each reading and writing through the store: build, measure, evaluate, attribute, report."""
