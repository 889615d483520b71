"""A local web page that scores uploaded X-rays (JPEG, PNG, DICOM) with a trained workdir.

  python -m cxr_jax.tools.serve --workdir=workdirs/mobilenet_v2          # http://127.0.0.1:8000
  curl -F files=@scan.dcm http://127.0.0.1:8000/api/predict               # the same, as JSON

Bound to 127.0.0.1 unless --host says otherwise; uploads over --max_upload_mb are refused.
"""

if __name__ == "__main__":
  from cxr_jax.tools import malloc_tuning
  malloc_tuning.prepare_process()  # Before the heavy imports: may restart once.

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags

from cxr_jax import serve
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (localhost by default).")
flags.DEFINE_integer("port", 8000, "Port.")
flags.DEFINE_float("max_upload_mb", serve.DEFAULT_MAX_UPLOAD_MB, "Largest file accepted.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import uvicorn  # pylint: disable=g-import-not-at-top
  application = serve.create_app(FLAGS.workdir, FLAGS.max_upload_mb)
  print(f"Serving {FLAGS.workdir} on http://{FLAGS.host}:{FLAGS.port}/ (Ctrl-C stops)",
        flush=True)
  uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="warning")


if __name__ == "__main__":
  startup.run(main)
