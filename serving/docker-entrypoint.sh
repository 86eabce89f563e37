#!/bin/sh
# The image's default command, as tensorflow/serving's entrypoint: serve $MODEL_NAME from
# $MODEL_BASE_PATH/$MODEL_NAME on every interface of the container's own network namespace
# (publish it on 127.0.0.1 only: -p 127.0.0.1:8500:8500). Extra arguments are appended;
# a later flag overrides an earlier one.
exec optdse-serve --host=0.0.0.0 --port=8500 --rest_api_port=8501 \
    --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
