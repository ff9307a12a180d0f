"""``zk://host:port[,host:port…][/chroot]``: ZooKeeper with a change log in the same multi.

Every write is one ``multi``: a version check of its log (which changes only when the
log moves to a new bucket or is pruned), the data and index writes with their own checks
(create-if-absent, the data node's version for compare-and-swap) and the change node.
Its revision is the transaction's zxid. The node layout, buckets and pruning are
described in :mod:`dfdb.drivers.zookeeper.layout`; how a watch reads the logs in
:mod:`dfdb.drivers.zookeeper.source`.

Options: ``session_timeout`` (seconds, default 10), ``timeout`` (seconds per call,
default 10), ``bucket_size`` (default 10,000), ``keep`` (buckets kept per log, default
10), ``idle`` (seconds between safety re-reads of every log, default 5), ``window``
(writes in flight in ``put_many``, default 64). Digest authentication comes from the
URL's user and password.

Values: at most :attr:`ZooKeeperDriver.max_value_size` bytes (500,000), since a write
sends its value twice in one request (the data node and the change record) and
ZooKeeper refuses requests over ``jute.maxbuffer`` (1 MiB); a larger one is refused with
:class:`~dfdb.errors.ValueTooLargeError` before anything is sent. A change record the
source cannot read (not written by dfdb) is logged, counted and answered with a
``resync`` of its table.

A listing reads its data nodes with ``multiRead`` (ZooKeeper 3.6 and later), many nodes
a request; a server without it is read one node a request.

The package's modules: ``session`` (dfdb's session repair around aiozk), ``client``
(the calls, under dfdb's time-outs and errors), ``reads`` (``multiRead``), ``layout``
(paths, records, buckets, rotation, pruning), ``driver`` and ``source``.
"""

from dfdb.drivers.zookeeper.driver import ZooKeeperDriver
from dfdb.drivers.zookeeper.source import ZooKeeperSource

__all__ = ["ZooKeeperDriver", "ZooKeeperSource"]
