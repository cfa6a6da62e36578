"""The official OpenAI Python SDK, unchanged, against a running easel server.

    python tests/openai_sdk/check.py BASE_URL API_KEY

Run by tests/tests/openai_sdk.rs (with the SDK from infra/test-tools.txt). Prints one line per
check and exits non-zero on the first failure.
"""
import base64
import struct
import sys
import urllib.request

import openai
from openai import OpenAI


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def main() -> None:
    base, key = sys.argv[1], sys.argv[2]
    client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)

    # response_format=url (the default), two images, with the SDK's own types.
    result = client.images.generate(model="dall-e-2", prompt="a red fox in the snow", n=2, size="256x256")
    assert result.created > 1_700_000_000, result
    assert len(result.data) == 2, result
    for image in result.data:
        assert image.url and image.b64_json is None, image
        with urllib.request.urlopen(image.url) as response:
            assert png_size(response.read()) == (256, 256)
    print("images.generate url: ok", flush=True)

    # response_format=b64_json, another alias, quality and style.
    result = client.images.generate(model="dall-e-3", prompt="a lighthouse", size="512x512", quality="hd",
                                    style="natural", response_format="b64_json")
    assert len(result.data) == 1 and result.data[0].url is None, result
    picture = base64.b64decode(result.data[0].b64_json)
    assert png_size(picture) == (512, 512)
    print("images.generate b64_json: ok", flush=True)

    # images.edit: the SDK's multipart upload of a file, both response formats.
    edited = client.images.edit(image=("in.png", picture, "image/png"), prompt="the same at night", n=2,
                                size="256x256", response_format="b64_json")
    assert len(edited.data) == 2, edited
    assert all(png_size(base64.b64decode(d.b64_json)) == (256, 256) for d in edited.data)
    edited = client.images.edit(image=("in.png", picture, "image/png"), prompt="the same at night", size="256x256")
    with urllib.request.urlopen(edited.data[0].url) as response:
        assert png_size(response.read()) == (256, 256)
    try:
        client.images.edit(image=("in.png", picture, "image/png"), mask=("m.png", picture, "image/png"), prompt="x")
        raise AssertionError("a mask was accepted")
    except openai.BadRequestError as e:
        assert e.param == "mask", e
    print("images.edit: ok", flush=True)

    # Errors arrive as the SDK's exception classes, with OpenAI's codes.
    try:
        client.images.generate(model="dall-e-9", prompt="x")
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e
    try:
        client.images.generate(prompt="x", size="300x300")
        raise AssertionError("a size outside the model's list was accepted")
    except openai.BadRequestError as e:
        assert e.param == "size", e
    try:
        OpenAI(base_url=f"{base}/v1", api_key="not-a-key", max_retries=0).images.generate(prompt="x")
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError as e:
        assert e.code == "invalid_api_key", e
    print("errors: ok", flush=True)

    models = [m.id for m in client.models.list()]
    assert "dall-e-2" in models and "gpt-image-1" in models, models
    print("models.list: ok", flush=True)


if __name__ == "__main__":
    main()
