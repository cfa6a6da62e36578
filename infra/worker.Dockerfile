# The worker image: the easel-worker binary, ONNX Runtime from the PyPI wheel, and a model folder.
#
#   docker build -f infra/worker.Dockerfile -t easel-worker .                  # the bundled model (easel-shapes)
#   docker build -f infra/worker.Dockerfile --build-arg MODEL_DIR=models/my-sd15 -t easel-worker .
#
# As a Lambda function (the SAM template's WorkerFunction) it is fed by the jobs queue. On a GPU or
# any other host it polls the queue itself:
#   docker run --env-file worker.env --entrypoint /var/runtime/bootstrap easel-worker --poll
#
# Both stages are Amazon Linux 2023, the Lambda runtime's own OS, so the binary's glibc matches.

FROM public.ecr.aws/amazonlinux/amazonlinux:2023 AS build
RUN dnf install -y --setopt=install_weak_deps=False gcc gcc-c++ make tar gzip python3 python3-pip findutils \
    && dnf clean all
ARG RUST_VERSION=1.95.0
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# ONNX Runtime's shared library, from the onnxruntime wheel, and NudeNet's 320n.onnx moderation
# model (AGPL-3.0), from the nudenet wheel (infra/setup.sh pins both).
RUN bash infra/setup.sh
RUN cargo build --release --locked -p easel-fn-worker --bin easel-worker \
    && cp target/release/easel-worker /easel-worker

FROM public.ecr.aws/lambda/provided:al2023
ARG MODEL_DIR=models/easel-shapes
COPY --from=build /easel-worker ${LAMBDA_RUNTIME_DIR}/bootstrap
COPY --from=build /src/.easel/onnxruntime/ /opt/easel/onnxruntime/
COPY --from=build /src/.easel/models/nudenet/ /opt/easel/moderation/
COPY ${MODEL_DIR} /opt/easel/model
ENV ORT_DYLIB_PATH=/opt/easel/onnxruntime/libonnxruntime.so.1.31.1 \
    EASEL_MODEL_DIR=/opt/easel/model \
    EASEL_MODERATION_MODEL=/opt/easel/moderation/320n.onnx
# The Lambda base image runs ${LAMBDA_RUNTIME_DIR}/bootstrap; the handler name is not used.
CMD ["easel-worker"]
