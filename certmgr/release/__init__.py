"""The release image: what it is (:mod:`.spec`), its deterministic layers and OCI layout
(:mod:`.oci`), and how it is built from a source tree (:mod:`.image`).

docs/REPRODUCIBLE.md says what is pinned and how anyone rebuilds an image bit for bit.
"""
