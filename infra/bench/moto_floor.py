#!/usr/bin/env python3
"""The emulator's own floor for one submit: the three calls the api function makes (GetItem of the
key, PutItem of the task, SendMessage of the job), made from boto3 against a fresh moto_server.

    .easel/tools/bin/python infra/bench/moto_floor.py

Compare with `cargo bench -p easel-fn-api --bench submit` (docs/benchmarks.md)."""
import os, socket, subprocess, time, uuid

import boto3

with socket.socket() as probe:  # a free loopback port
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
moto = os.environ.get("MOTO", os.path.join(root, ".easel/tools/bin/moto_server"))
p = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try: socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.1)
kw = dict(endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
ddb = boto3.client("dynamodb", **kw); sqs = boto3.client("sqs", **kw)
ddb.create_table(TableName="t", BillingMode="PAY_PER_REQUEST", KeySchema=[{"AttributeName":"pk","KeyType":"HASH"}], AttributeDefinitions=[{"AttributeName":"pk","AttributeType":"S"}])
q = sqs.create_queue(QueueName="q")["QueueUrl"]
ddb.put_item(TableName="t", Item={"pk":{"S":"apikey#x"}, "v":{"S":"y"}})
ms = []
for i in range(510):
    t = time.perf_counter()
    ddb.get_item(TableName="t", Key={"pk":{"S":"apikey#x"}}, ConsistentRead=True)
    ddb.put_item(TableName="t", Item={"pk":{"S":f"task#{uuid.uuid4()}"}, "task":{"M":{"prompt":{"S":"a lighthouse at dusk"}}}}, ConditionExpression="attribute_not_exists(pk)")
    sqs.send_message(QueueUrl=q, MessageBody='{"task_id":"x"}')
    if i >= 10: ms.append((time.perf_counter()-t)*1000)
ms.sort()
print(f"boto3 floor (GetItem+PutItem+SendMessage) on moto: p50 {ms[len(ms)//2]:.1f} ms, p99 {ms[int(len(ms)*0.99)]:.1f} ms")
p.terminate()
