"""certmgr: trust material for teeproxy (keys, certificate store, development CA)."""
