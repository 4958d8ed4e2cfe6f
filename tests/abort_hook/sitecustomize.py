"""Test-only: a decoder process that aborts, as GDCM does on some damaged codestreams.

With this folder on PYTHONPATH and FRACSIGHT_TEST_ABORT_ON=NAME in the environment, fracsight's
decoder worker process (``python -c ... fracsight.io.worker``) calls ``os.abort()`` when it is
asked to read a file whose name contains NAME. It reaches processes that a test cannot patch:
the decoder processes of Ray's workers in ``tests/test_batch.py``. Nothing else is changed.
"""

import os
import sys

_NAME = os.environ.get("FRACSIGHT_TEST_ABORT_ON")

if _NAME and sys.argv[:1] == ["-c"] and len(sys.argv) == 4:  # the decoder worker's arguments
    from fracsight.io import worker as _worker

    _real = _worker.read_radiograph

    def _read_or_abort(path, *args, **kwargs):
        if _NAME in os.path.basename(os.fsdecode(path)):
            os.abort()
        return _real(path, *args, **kwargs)

    _worker.read_radiograph = _read_or_abort
