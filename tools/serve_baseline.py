"""What a Python user would stand up instead of `alexnet serve`, for
tools/bench_serve.sh to load in the same run: the checkpoint exported to ONNX,
under onnxruntime, behind a small FastAPI app in one uvicorn worker.

Each request is one image (the raw body), prepared as `alexnet classify` does
(decode, shorter side to 256, centre crop 256, centre crop to the net's input,
mean subtracted), run at batch 1 on a thread of Starlette's pool (onnxruntime
releases the GIL), answered with the top-5 classes.

    BASELINE_MODEL=alexnet.onnx BASELINE_THREADS=2 \
        uvicorn --app-dir tools serve_baseline:app --port 8081 --workers 1

`python tools/serve_baseline.py photo IN OUT` writes IN as a 500x375 JPEG of
quality 90 (the load test's photo).
"""

import io
import os
import sys

import numpy as np

SIDE = 256


def make_photo(source, out):
    from PIL import Image

    image = Image.open(source).convert("RGB")
    # Cover 500x375 (4:3), then cut the centre.
    scale = max(500 / image.width, 375 / image.height)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - 500) // 2, (image.height - 375) // 2
    image.crop((left, top, left + 500, top + 375)).save(out, quality=90)


def create_app():
    import onnxruntime as ort
    from fastapi import FastAPI, HTTPException, Request
    from PIL import Image
    from starlette.concurrency import run_in_threadpool

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("BASELINE_THREADS", "2"))
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        os.environ["BASELINE_MODEL"], options, providers=["CPUExecutionProvider"]
    )
    feed = session.get_inputs()[0]
    _, channels, height, width = feed.shape
    mean = np.full((channels, height, width), 120.0, dtype=np.float32)

    def prepare(body):
        image = Image.open(io.BytesIO(body)).convert("RGB")
        scale = SIDE / min(image.width, image.height)
        image = image.resize(
            (max(SIDE, round(image.width * scale)), max(SIDE, round(image.height * scale))),
            Image.BILINEAR,
        )
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
        return (pixels - mean)[None]

    def predict(body):
        logits = session.run(None, {feed.name: prepare(body)})[0][0]
        exp = np.exp(logits - logits.max())
        probabilities = exp / exp.sum()
        top = np.argsort(-probabilities)[:5]
        return [{"class": int(c), "probability": float(probabilities[c])} for c in top]

    app = FastAPI()

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await request.body()
        try:
            top = await run_in_threadpool(predict, body)
        except Exception as error:  # an undecodable image
            raise HTTPException(status_code=400, detail=str(error))
        return {"images": [{"top": top}]}

    @app.get("/healthz")
    def healthz():
        return "ok"

    return app


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "photo":
    make_photo(sys.argv[2], sys.argv[3])
elif "BASELINE_MODEL" in os.environ:
    app = create_app()
