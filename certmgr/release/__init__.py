"""Releases: what a build is predicted to measure, and the signed manifest that says so.

- :mod:`certmgr.release.dstack_compose`: dstack's ``app-compose.json``, its compose hash,
  the RTMR3 runtime events and MRCONFIGID (pure);
- :mod:`certmgr.release.predict`: the predicted registers and teeproxy measurement id per
  target (pure);
- :mod:`certmgr.release.snp_launch`: the SEV-SNP launch measurement, computed by the
  ``sev-snp-measure`` library from OVMF, kernel, initrd and command line (reads files);
- :mod:`certmgr.release.manifest`: the build manifest, an in-toto Statement in a DSSE
  envelope signed by the release key (pure, but for the key file helpers it names).
"""
