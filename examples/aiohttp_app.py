"""An aiohttp application that embeds inproxy in its own event loop.

The proxy starts and stops with the application (on_startup / on_cleanup) and runs on the
same loop as the application's handlers.  Routes:

* ``GET /credentials?user=NAME`` - S3 credentials the proxy issued for that user (a real
  application takes the user from its own session or login, never from the query).
* ``GET /buckets/{bucket}/objects`` - the keys in a bucket, listed through the proxy.
* ``GET /buckets/{bucket}/url?key=KEY`` - a presigned GET URL on the proxy.

Run: python examples/aiohttp_app.py            (a self-check: starts, calls each route, stops)
     python examples/aiohttp_app.py --serve    (serves on http://127.0.0.1:8080 until Ctrl-C)
"""
# requires: boto3

from __future__ import annotations

import asyncio
import sys

from aiohttp import ClientSession, web

from inproxy import AccessRequest, Backend, ProxyServer, clients

from _local import local_backend  # a private S3 server for the example to run against

PROXY = web.AppKey("proxy", ProxyServer)
BACKEND = web.AppKey("backend", Backend)


def may(access: AccessRequest) -> bool:
    """The application's policy: everyone may read and list, only 'admin' may write."""
    if access.operation.startswith(("Get", "Head", "List")):
        return True
    return access.identity.name == "admin"


async def start_proxy(app: web.Application) -> None:
    proxy = ProxyServer(backends=app[BACKEND], authorizer=may)
    await proxy.start()  # binds in this (the application's) event loop
    app[PROXY] = proxy


async def stop_proxy(app: web.Application) -> None:
    await app[PROXY].stop()


async def credentials(request: web.Request) -> web.Response:
    user = request.query.get("user", "guest")
    cfg = clients.client_config(request.app[PROXY], identity=user, ttl=900)
    return web.json_response({"endpoint_url": cfg.endpoint_url, "region": cfg.region,
                              "aws_access_key_id": cfg.access_key,
                              "aws_secret_access_key": cfg.secret_key,
                              "aws_session_token": cfg.session_token, "expires_at": cfg.expires_at})


async def list_objects(request: web.Request) -> web.Response:
    s3 = clients.boto3_client(request.app[PROXY], identity="app-server")
    # boto3 blocks: in a thread, so this loop (which also runs the proxy) keeps serving.
    answer = await asyncio.to_thread(s3.list_objects_v2, Bucket=request.match_info["bucket"])
    return web.json_response([o["Key"] for o in answer.get("Contents", [])])


async def presigned_url(request: web.Request) -> web.Response:
    s3 = clients.boto3_client(request.app[PROXY], identity=request.query.get("user", "guest"), ttl=300)
    url = s3.generate_presigned_url(  # no I/O: signing only
        "get_object", Params={"Bucket": request.match_info["bucket"], "Key": request.query["key"]},
        ExpiresIn=300)
    return web.json_response({"url": url})


def make_app(backend: Backend) -> web.Application:
    app = web.Application()
    app[BACKEND] = backend
    app.on_startup.append(start_proxy)
    app.on_cleanup.append(stop_proxy)
    app.router.add_get("/credentials", credentials)
    app.router.add_get("/buckets/{bucket}/objects", list_objects)
    app.router.add_get("/buckets/{bucket}/url", presigned_url)
    return app


async def self_check(app: web.Application) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with ClientSession() as http:
            async with http.get(f"{base}/credentials", params={"user": "admin"}) as answer:
                creds = await answer.json()
            # A client (here boto3) uses those credentials to write as "admin".
            s3 = clients.boto3_client(clients.ClientConfig(
                creds["endpoint_url"], creds["aws_access_key_id"], creds["aws_secret_access_key"],
                creds["aws_session_token"], region=creds["region"]))
            await asyncio.to_thread(s3.create_bucket, Bucket="examples")
            await asyncio.to_thread(s3.put_object, Bucket="examples", Key="hello world.txt", Body=b"hi")
            async with http.get(f"{base}/buckets/examples/objects") as answer:
                print("objects:", await answer.json())
            async with http.get(f"{base}/buckets/examples/url", params={"key": "hello world.txt"}) as answer:
                url = (await answer.json())["url"]
            async with http.get(url) as answer:
                print("presigned GET:", answer.status, await answer.read())
    finally:
        await runner.cleanup()  # on_cleanup stops the proxy


def main() -> None:
    with local_backend() as backend:
        app = make_app(backend)
        if "--serve" in sys.argv:
            web.run_app(app, host="127.0.0.1", port=8080)
        else:
            asyncio.run(self_check(app))


if __name__ == "__main__":
    main()
