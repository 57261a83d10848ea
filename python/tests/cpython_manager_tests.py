"""CPython's own Manager tests (Debian's libpython3.11-testsuite,
test/_test_multiprocessing.py) run against mpbroker's Manager.

    /usr/bin/python3 cpython_manager_tests.py fork|spawn|forkserver [--python-manager]

multiprocessing.Manager and TestSyncManagerTypes.manager_class are replaced by
mpbroker's before the test classes are built, here at import time, so that spawn and
forkserver children, which import this file again as __mp_main__, see the same. The
classes are the Manager ones the issue names; out of scope: Pool (the broker does not
run Python, so TestSyncManagerTypes.test_pool is left out) and the classes that
register Python callables to run in the server. --python-manager runs the same
selection with Python's own Manager, for comparison. Exit 0 when every test passed.
"""
import os
import sys
import unittest

import multiprocessing
import multiprocessing.managers

START = os.environ.setdefault('MPB_START_METHOD',
                              sys.argv[1] if len(sys.argv) > 1 else 'fork')
PYTHON_MANAGER = os.environ.setdefault(
    'MPB_PYTHON_MANAGER', '1' if '--python-manager' in sys.argv else '0') == '1'

try:
    import test._test_multiprocessing as T
except ImportError:
    print('SKIP: test._test_multiprocessing not found (Debian: libpython3.11-testsuite)')
    sys.exit(77)

if not PYTHON_MANAGER:
    import mpbroker
    multiprocessing.Manager = mpbroker.Manager
    T.TestSyncManagerTypes.manager_class = mpbroker.SyncManager

T.install_tests_in_module_dict(globals(), START)

CLASSES = ['WithManagerTestQueue', 'WithManagerTestLock', 'WithManagerTestSemaphore',
           'WithManagerTestCondition', 'WithManagerTestEvent', 'WithManagerTestBarrier',
           'WithManagerTestContainers', 'TestSyncManagerTypes']
LEFT_OUT = {'TestSyncManagerTypes.test_pool'}


def main():
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name in CLASSES:
        for test in loader.loadTestsFromTestCase(globals()[name]):
            if '.'.join(test.id().split('.')[-2:]) not in LEFT_OUT:
                suite.addTest(test)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    ok = result.testsRun - bad - len(result.skipped)
    print('cpython-manager-tests %s (%s): %d passed, %d skipped, %d failed' % (
        START, 'Python Manager' if PYTHON_MANAGER else 'mpbroker', ok,
        len(result.skipped), bad))
    return 0 if bad == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
