"""Releases: the image, what it is predicted to measure, and the signed manifest saying so.

- what the image is (:mod:`.spec`), its deterministic layers and OCI layout (:mod:`.oci`),
  and how it is built from a source tree (:mod:`.image`); docs/REPRODUCIBLE.md says what is
  pinned and how anyone rebuilds an image bit for bit;
- :mod:`.dstack_compose`: dstack's ``app-compose.json``, its compose hash, the RTMR3 runtime
  events and MRCONFIGID (pure);
- :mod:`.predict`: the predicted registers and teeproxy measurement id per target (pure);
- :mod:`.snp_launch`: the SEV-SNP launch measurement, computed by the ``sev-snp-measure``
  library from OVMF, kernel, initrd and command line (reads files);
- :mod:`.layout`: an OCI layout's image digest, file hashes (reads files);
- :mod:`.manifest`: the build manifest, an in-toto Statement in a DSSE envelope signed by
  the release key (pure).
"""
