"""A protoc plugin that emits gRPC Python stubs with grpcio-tools' embedded generator.

Pants runs protoc with ``--plugin=protoc-gen-grpc=<this PEX>``. No package on the index
ships the standalone ``grpc_python_plugin`` binary, but grpcio-tools embeds the same C++
generator behind its own protoc: we hand it the request's file descriptors (which hold
every file the request needs, imports included) and return what it writes.
"""

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = os.path.join(tmp, "descriptors.pb")
        with open(descriptors, "wb") as f:
            f.write(descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString())
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        options = f"{request.parameter}:" if request.parameter else ""
        argv = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={options}{out_dir}",
            *request.file_to_generate,
        ]
        if protoc.main(argv) != 0:
            response.error = f"grpcio-tools failed to generate stubs for {request.file_to_generate}"
            return response
        for root, _, files in os.walk(out_dir):
            for name in sorted(files):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8") as f:
                    response.file.add(name=os.path.relpath(path, out_dir), content=f.read())
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
