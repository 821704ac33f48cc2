"""Scale-out on Ray Serve: the engine as replicas on a Ray cluster, one per GPU.

deployment.py  the replica deployment (each replica is a LocalEngine) and its routing
bridge.py      the Ray driver, a child process of the server that relays requests and events over a pipe
client.py      RayEngine, the EngineClient the server uses (it imports neither torch nor ray)
"""
