"""The Python client over TLS (issue 14): a SyncManager connects to a broker's
--tls-listen port with the CA from $MPBROKER_TLS_CA (libmpbroker reads it), and a
wrong CA is refused with the TLS reason. Certificates are made by
tests/tls-certs.sh ($MPB_TLS_CERTS) into a temporary directory."""
import os
import socket
import subprocess
import tempfile
import time
import unittest

from mpbroker import managers

KEY = b'python tls test key 0123456789'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class TLS(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        subprocess.run(['sh', os.environ['MPB_TLS_CERTS'], d], check=True)
        with open(os.path.join(d, 'key'), 'wb') as f:
            f.write(KEY)
        os.chmod(os.path.join(d, 'key'), 0o600)
        cls.port = free_port()
        cls.broker = subprocess.Popen([
            os.environ['MPBROKER_SERVER'], '--socket', 'none', '--quiet',
            '--tls-listen', 'tls://127.0.0.1:%d' % cls.port,
            '--tls-cert', os.path.join(d, 'server.pem'), '--tls-key', os.path.join(d, 'server.key'),
            '--authkey-file', os.path.join(d, 'key')])
        for _ in range(500):
            with socket.socket() as s:
                if s.connect_ex(('127.0.0.1', cls.port)) == 0:
                    break
            time.sleep(0.02)

    @classmethod
    def tearDownClass(cls):
        cls.broker.terminate()
        rc = cls.broker.wait(30)
        cls.tmp.cleanup()
        if rc != 0:  # under ASan a leak in the broker shows here
            raise RuntimeError('the broker exited with %r' % rc)

    def manager(self, ca, host):
        # One host per test: the package keeps one client per address in a process.
        os.environ['MPBROKER_TLS_CA'] = os.path.join(self.tmp.name, ca)
        m = managers.SyncManager(address='tls://%s:%d' % (host, self.port), authkey=KEY)
        m.connect()
        return m

    def test_right_ca(self):
        m = self.manager('ca.pem', 'localhost')
        l = m.list([1, 2])
        l.append(3)
        self.assertEqual(list(l), [1, 2, 3])

    def test_wrong_ca_refused(self):
        with self.assertRaises(Exception) as cm:
            self.manager('other-ca.pem', '127.0.0.1')
        self.assertIn("the broker's certificate", str(cm.exception))


if __name__ == '__main__':
    unittest.main()
