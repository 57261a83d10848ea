"""The Python examples (examples/python/) run and print what their docstrings say,
under each start method.

    PYTHONPATH=build/python /usr/bin/python3 python/tests/test_examples.py -v
"""
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, '..', '..', 'examples', 'python')

EXPECTED = {
    'records.py': ([], 'Computers 1\nHistoire 5\nMaths 6\nPhysics 9\n'),
    'namespace.py': ([], 'before Namespace(x=1, y=1)\nafter Namespace(x=6, y=10)\n'),
    'producer_consumer.py': (['0.5'], 'm1\nm2\nm3\nall messages read\n'),
    'value_array.py': ([], '3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]\n'),
}

# Runs the example as __main__ under a start method (children re-import it as
# __mp_main__, as they do a script).
RUNNER = ('import multiprocessing, runpy, sys; multiprocessing.set_start_method(sys.argv[1]); '
          'sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name="__main__")')


class Examples(unittest.TestCase):
    def check(self, name, method):
        args, expected = EXPECTED[name]
        out = subprocess.run([sys.executable, '-c', RUNNER, method,
                              os.path.join(EXAMPLES, name), *args],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, expected)


for _name in EXPECTED:
    for _method in ('fork', 'spawn', 'forkserver'):
        def _t(self, name=_name, method=_method):
            self.check(name, method)
        setattr(Examples, 'test_%s_%s' % (_name[:-3], _method), _t)

if __name__ == '__main__':
    unittest.main()
