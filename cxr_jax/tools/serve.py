"""A web page that scores uploaded X-rays (JPEG, PNG, DICOM) with a trained workdir.

  python -m cxr_jax.tools.serve --workdir=workdirs/mobilenet_v2          # http://127.0.0.1:8000
  curl -F files=@scan.dcm http://127.0.0.1:8000/api/predict               # the same, as JSON
  CXR_JAX_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))') \
    python -m cxr_jax.tools.serve --workdir=... --host=0.0.0.0            # other machines too

Bound to 127.0.0.1 unless --host says otherwise; any other address needs an access token
(README.md, "Serving"). Uploads over --max_upload_mb or --max_megapixels are refused;
--max_concurrent requests score at once and up to --max_queue more wait their turn.
"""

from cxr_jax.tools import malloc_tuning
malloc_tuning.prepare_main(__name__)  # Before the heavy imports: a command may restart once.

import os  # pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from cxr_jax import serve
from cxr_jax.inference import adaptation
from cxr_jax.tools import startup

flags.DEFINE_string("workdir", None, "Trained workdir.", required=True)
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (localhost by default).")
flags.DEFINE_integer("port", 8000, "Port.")
flags.DEFINE_string("token", None, f"Access token every API call must send (Authorization: "
                    f"Bearer <token>); required off loopback. ${serve.TOKEN_ENV} is the same "
                    f"and stays out of the process list.")
flags.DEFINE_float("max_upload_mb", serve.DEFAULT_MAX_UPLOAD_MB, "Largest file accepted.")
flags.DEFINE_float("max_megapixels", serve.DEFAULT_MAX_MEGAPIXELS,
                   "Most pixels one request's images may hold in all (read from headers).")
flags.DEFINE_integer("max_concurrent", serve.DEFAULT_MAX_CONCURRENT,
                     "Requests scored at once; more wait in the queue (--max_queue).")
flags.DEFINE_integer("max_queue", serve.DEFAULT_MAX_QUEUE,
                     "Requests that may wait for a turn to score, first come first served; "
                     "once it is full, more get 503 with Retry-After at once.")
flags.DEFINE_float("max_wait_s", serve.DEFAULT_MAX_WAIT_S,
                   "Longest a queued request waits for its turn (seconds); then it gets 503 "
                   "with Retry-After.")
flags.DEFINE_enum("adapt", adaptation.AUTO, list(adaptation.CHOICES),
                  "Label-free adaptation to each request's images, answered beside the "
                  "model's own (auto: when the folder test calls them shifted and they are "
                  "enough).")
FLAGS = flags.FLAGS


def main(argv):
  del argv  # None: startup.run refuses positional arguments.
  token = FLAGS.token or os.environ.get(serve.TOKEN_ENV) or None
  serve.check_exposure(FLAGS.host, token)  # Before the model loads: a refusal comes at once.
  import uvicorn  # pylint: disable=g-import-not-at-top
  application = serve.create_app(FLAGS.workdir, FLAGS.max_upload_mb, token=token,
                                 max_megapixels=FLAGS.max_megapixels,
                                 max_concurrent=FLAGS.max_concurrent,
                                 max_queue=FLAGS.max_queue, max_wait_s=FLAGS.max_wait_s,
                                 adapt=FLAGS.adapt)
  print(f"Serving {FLAGS.workdir} on http://{FLAGS.host}:{FLAGS.port}/"
        f"{' (access token required)' if token else ''} (Ctrl-C stops)", flush=True)
  uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="warning")


if __name__ == "__main__":
  startup.run(main)
