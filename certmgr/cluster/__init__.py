"""Replicas of one service sharing one identity through etcd (docs/CLUSTER.md).

- :mod:`certmgr.cluster.etcd`: an asyncio etcd v3 client (JSON gateway, bounded answers);
- :mod:`certmgr.cluster.envelope`: values sealed to the cluster key, versions checked;
- :mod:`certmgr.cluster.keyrelease`: join records and the cluster key wrapped with HPKE.
- :mod:`certmgr.cluster.signer`: the fleet's shared receipt signing key, sealed.
"""
