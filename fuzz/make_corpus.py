#!/usr/bin/python3
"""make_corpus.py - write the seed corpus of fuzz_dispatch (fuzz/corpus/).

Each seed is one session: a set-up byte (bit 0: the broker has an authkey; bit 1: the
target does the handshake with the key first), then msgpack-rpc requests as a client
sends them. Objects get ids 1, 2, ... in creation
order within a session, so the seeds can name them. Run with Debian's python3 (it
needs python3-msgpack); the files are committed, so the build does not run this.
"""
import os
import struct
import msgpack

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')


def ref(i):
    return msgpack.ExtType(1, struct.pack('>Q', i))


def session(calls, keyed=False, raw=b'', knows_key=False):
    out = bytearray([(1 if keyed else 0) | (2 if knows_key else 0)])
    for i, c in enumerate(calls):
        if c[0] == 'notify':
            out += msgpack.packb([2, c[1], list(c[2:])])
        else:
            out += msgpack.packb([0, i, c[0], list(c[1:])], use_bin_type=True)
    return bytes(out + raw)


S = {}
S['list'] = session([
    ('manager.create', 'list', [3, 1, 2]), ('list.append', ref(1), 'x'),
    ('list.extend', ref(1), [1.5, None, True]), ('list.insert', ref(1), 0, -7),
    ('list.getitem', ref(1), 1, None, 2), ('list.setitem', ref(1), 0, 5, 1, ['a', 'b']),
    ('list.sort', ref(1)), ('list.pop', ref(1)), ('list.remove', ref(1), 'x'),
    ('list.index', ref(1), 2), ('list.count', ref(1), 1), ('list.reverse', ref(1)),
    ('list.delitem', ref(1), 0), ('list.contains', ref(1), 3), ('list.copy', ref(1)),
    ('list.len', ref(1)), ('list.clear', ref(1)), ('manager.release', ref(1))])
S['dict'] = session([
    ('manager.open', 'dict', 'd', {'a': 1}), ('dict.setitem', ref(1), [1, 2], b'bin'),
    ('dict.getitem', ref(1), 'a'), ('dict.incr', ref(1), 'n', 5), ('dict.incr', ref(1), 'n', 0.5),
    ('dict.cas', ref(1), 'a', 1, 2), ('dict.update', ref(1), [['k', 'v']]),
    ('dict.items', ref(1)), ('dict.keys', ref(1)), ('dict.values', ref(1)),
    ('dict.pop', ref(1), 'zz', 0), ('dict.popitem', ref(1)), ('dict.setdefault', ref(1), 's'),
    ('dict.get', ref(1), 'q'), ('dict.delitem', ref(1), 'a'), ('dict.copy', ref(1)),
    ('dict.setitem', ref(1), {'unhashable': 1}, 1), ('dict.clear', ref(1)),
    ('manager.delete', 'd'), ('manager.objects',)])
S['namespace'] = session([
    ('manager.create', 'namespace', {'x': 1}), ('namespace.setattr', ref(1), 'y', [ref(1)]),
    ('namespace.incr', ref(1), 'x', 4), ('namespace.cas', ref(1), 'x', 5, 'five'),
    ('namespace.getattr', ref(1), 'nope'), ('namespace.vars', ref(1)),
    ('namespace.delattr', ref(1), 'y'), ('manager.objects',)])
S['queue_wake'] = session([
    ('manager.create', 'queue', 2), ('manager.create', 'joinablequeue'),
    ('queue.put', ref(1), 'a'), ('queue.put_nowait', ref(1), 'b'),
    ('queue.put', ref(1), 'c', False), ('queue.get', ref(1)), ('queue.get_nowait', ref(1)),
    ('queue.get', ref(1), True, 5),  # parks: what follows runs on a second connection
    ('queue.put', ref(1), 'wake'), ('queue.qsize', ref(1)), ('queue.put', ref(2), 1),
    ('queue.get', ref(2)), ('queue.task_done', ref(2)), ('queue.join', ref(2), 1)])
S['lock_sem_wake'] = session([
    ('manager.create', 'lock'), ('manager.create', 'semaphore', 0),
    ('manager.create', 'rlock'), ('lock.acquire', ref(1)), ('lock.acquire', ref(3)),
    ('lock.acquire', ref(3)), ('lock.locked', ref(1)),
    ('semaphore.acquire', ref(2), True, 1),  # parks
    ('semaphore.release', ref(2), 2), ('lock.acquire', ref(1), True, 2),  # parks again
    ('lock.release', ref(1)), ('semaphore.value', ref(2))])
S['cond_event_barrier'] = session([
    ('manager.create', 'condition'), ('manager.create', 'event'),
    ('manager.create', 'barrier', [2, 1.0]), ('condition.acquire', ref(1)),
    ('condition.notify', ref(1)), ('condition.lock', ref(1)),
    ('condition.wait', ref(1), 0.5),  # parks
    ('event.wait', ref(2), 1), ('event.set', ref(2)), ('event.is_set', ref(2)),
    ('barrier.wait', ref(3)), ('barrier.n_waiting', ref(3)), ('barrier.abort', ref(3)),
    ('barrier.broken', ref(3)), ('barrier.reset', ref(3)), ('barrier.parties', ref(3))])
S['value_array'] = session([
    ('manager.create', 'value', ['d', 1.5]), ('manager.create', 'array', ['i', 4]),
    ('manager.create', 'array', ['u', 'abc']), ('value.get', ref(1)), ('value.set', ref(1), 2),
    ('value.incr', ref(1), 0.25), ('array.setitem', ref(2), 0, 2, None, [7, 8]),
    ('array.getitem', ref(2), -1), ('array.setitem', ref(2), 1, 2 ** 40),
    ('array.tolist', ref(3)), ('array.len', ref(2)), ('manager.create', 'array', ['b', 3]),
    ('manager.create', 'value', ['Q', -1])])
S['set'] = session([
    ('manager.create', 'set', [1, 2, 3]), ('set.add', ref(1), 'x'), ('set.discard', ref(1), 2),
    ('set.union', ref(1), [9]), ('set.intersection', ref(1), [1, 'x']),
    ('set.difference_update', ref(1), [1]), ('set.items', ref(1), 0, 1), ('set.pop', ref(1)),
    ('set.issubset', ref(1), [3, 'x', 5])])
S['manager_admin'] = session([
    ('manager.ping',), ('manager.ping', {'p': [1, 2]}), ('manager.methods',), ('manager.stats',),
    ('manager.clients',), ('manager.monitor',), ('manager.create', 'list'),
    ('manager.incref', ref(1)), ('manager.release', ref(1)), ('manager.release', ref(1)),
    ('manager.release', ref(1)), ('manager.lookup', 'none'), ('manager.create', 'nosuchtype'),
    ('list.append', ref(99), 1), ('notify', 'manager.ping'), ('notify', 'nvim_whatever'),
    ('manager.shutdown',)])
S['watch_atomic'] = session([
    ('manager.create', 'dict', {'a': 1}), ('manager.create', 'list', [1, 2]),
    ('manager.watch', ref(1)), ('manager.watch', ref(2)), ('manager.version', ref(1)),
    ('dict.incr', ref(1), 'a', 2), ('manager.expect', ref(1), 1), ('manager.expect', ref(1), 7),
    ('manager.atomic', [['manager.expect', [ref(1), 1]], ['dict.incr', [ref(1), 'a', -1]],
                        ['list.append', [ref(2), 'x']], ['list.pop', [ref(2)]]]),
    ('manager.atomic', [['list.clear', [ref(2)]], ['dict.delitem', [ref(1), 'zz']]]),
    ('manager.atomic', [['queue.get', [ref(1)]]]), ('manager.atomic', [['manager.atomic', [[]]]]),
    ('manager.atomic', [1, 'x']), ('manager.atomic', []),
    ('manager.unwatch', ref(2)), ('manager.wait_change', ref(1), 0, 1),
    ('manager.wait_change', ref(2), 99, 0.01),  # parks: what follows runs on a second connection
    ('list.append', ref(2), 'wake'), ('manager.wait_change', ref(1), 3),
    ('manager.release', ref(1))])
S['pipe'] = session([
    ('manager.create', 'pipe'), ('manager.create', 'pipe', {'duplex': False}),
    ('pipe.send', ref(1), 1, [42, None, 'hello']), ('pipe.poll', ref(1), 0),
    ('pipe.recv', ref(1), 0), ('pipe.send', ref(2), 0, 'refused'), ('pipe.send', ref(2), 1, b'x'),
    ('pipe.recv', ref(2), 0, 0.5), ('pipe.poll', ref(1), 1, None), ('pipe.info', ref(1)),
    ('pipe.recv', ref(1), 1, 5),  # parks: what follows runs on a second connection
    ('pipe.send', ref(1), 0, 'wake'), ('pipe.send', ref(1), 2, 0), ('pipe.close', ref(1), 0),
    ('pipe.recv', ref(1), 1), ('pipe.send', ref(1), 1, 'broken'), ('manager.release', ref(1))])
S['channel_select'] = session([
    ('manager.create', 'channel'), ('manager.create', 'channel'), ('manager.create', 'channel'),
    ('channel.join', ref(1), 'writer'), ('channel.join', ref(1), 'reader'),
    ('channel.read', ref(1), 0), ('channel.write', ref(2), 'x', 0),
    ('manager.select', [[ref(1), 'read'], [ref(2), 'write', [1, 2]], [ref(3), 'read']], 5),
    ('channel.write', ref(2), 'late', 5),  # parks behind, on the next connection
    ('channel.read', ref(2)), ('manager.select', [[ref(1), 'peek']]), ('channel.info', ref(2)),
    ('channel.retire', ref(1), 'writer'), ('channel.poison', ref(3)),
    ('manager.select', [[ref(3), 'read']], 0), ('manager.select', [])])
S['bad_shapes'] = session([('manager.ping',)], raw=(
    b'\x05' + b'\x93\x00\x07\xa4ping' + b'\x94\x00\x08\x01\x90' +
    b'\x94\x01\x01\xc0\xc0' + b'\x94\x00\x09\xacmanager.ping\x05' +
    b'\x91' * 40 + b'\xc0' + b'\xdd\xff\xff\xff\xff'))
S['malformed'] = session([('manager.ping',)], raw=b'\xc1\x94\x00')
S['auth_ok_shape'] = session([
    ('auth.challenge', b'{sha256}' + bytes(range(40))), ('auth.response', b'{sha256}' + bytes(32)),
    ('manager.ping',)], keyed=True)
S['auth_gate'] = session([('manager.objects',), ('auth.challenge', b'short')], keyed=True)
S['auth_preauth_garbage'] = session([
    ('auth.challenge',), ('auth.challenge', b'{sha256}' + bytes(40), b'x')], keyed=True,
    raw=b'\xc0' * 64)
S['auth_keyed_session'] = session([
    ('manager.create', 'list', [1]), ('list.append', ref(1), 'k'),
    ('auth.challenge', b'{sha256}' + bytes(40)), ('auth.response', b'{sha256}' + bytes(32)),
    ('manager.monitor',), ('list.copy', ref(1))], keyed=True, knows_key=True)
S['auth_nokey'] = session([('auth.challenge', b'{sha256}' + bytes(40)), ('manager.ping',)])
S['big_reply'] = session([
    ('manager.create', 'list'), ('list.extend', ref(1), ['y' * 6000] * 20)] +
    [('list.copy', ref(1))] * 10 + [('manager.create', 'array', ['d', 10 ** 7])])

os.makedirs(OUT, exist_ok=True)
for name, data in S.items():
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(data)
print(f"wrote {len(S)} seeds to {OUT}")
