"""mpbroker: multiprocessing.Manager over the mpbroker broker.

    import mpbroker
    with mpbroker.Manager() as m:         # a private broker, as Manager() starts one
        records = m.list()
        ...

Manager(address) connects to a running broker instead ("unix:/path" or
"tcp://host:port"). Proxies behave as multiprocessing's (ListProxy, DictProxy, ...),
pickle into child processes under fork, spawn and forkserver, and raise Python's
exceptions. The C core (_mpbroker) is libmpbroker: connection, authentication,
pipelining and the value conversion.
"""
from ._mpbroker import Connection, Ref
from .client import (BrokerError, Conflict, NoSuchObject, OutOfMemory, PersistenceError, TooDeep,
                     TooLarge, get_client)
from .managers import Manager, SyncManager, find_server
from .proxies import (AcquirerProxy, ArrayProxy, BarrierProxy, BaseProxy, ConditionProxy,
                      DictProxy, EventProxy, ListProxy, NamespaceProxy, QueueProxy,
                      SetProxy, ValueProxy, PipeConnection, ChannelProxy, ChannelEnd,
                      ChannelPoisoned, ChannelRetired)

__all__ = ['Manager', 'SyncManager', 'Connection', 'Ref', 'BrokerError', 'Conflict',
           'NoSuchObject',
           'OutOfMemory', 'PersistenceError', 'TooDeep', 'TooLarge', 'find_server',
           'get_client', 'BaseProxy', 'ListProxy', 'DictProxy', 'NamespaceProxy',
           'QueueProxy', 'AcquirerProxy', 'ConditionProxy', 'EventProxy', 'BarrierProxy',
           'ValueProxy', 'ArrayProxy', 'SetProxy', 'PipeConnection', 'ChannelProxy',
           'ChannelEnd', 'ChannelPoisoned', 'ChannelRetired']
