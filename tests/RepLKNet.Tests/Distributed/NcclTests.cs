using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using RepLKNet.Distributed;
using RepLKNet.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace RepLKNet.Tests.Distributed;

/// <summary>
/// The NCCL path without a GPU: the library search and its "not available" reasons, the ABI constants against NCCL's
/// <c>nccl.h</c>, the unique id's way from rank 0 to every rank, and the communicator's buffer handling (pointer, count,
/// type, op) against a host-memory stand-in that reduces across threads. The real NCCL and CUDA calls are compile-only
/// here (bench/device/nccl-check.sh runs them on a GPU machine).
/// </summary>
public sealed class NcclTests
{
    public NcclTests() => Torch.EnsureLoaded();

    [Fact]
    public void Data_types_and_reductions_have_the_values_of_nccl_h()
    {
        // nccl.h (NVIDIA/nccl src/nccl.h.in): ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4, ncclUint64 5,
        // ncclFloat16 6, ncclFloat32 7, ncclFloat64 8, ncclBfloat16 9; ncclSum 0, ncclProd 1, ncclMax 2, ncclMin 3, ncclAvg 4.
        var types = new (ScalarType Dtype, int Nccl)[]
        {
            (ScalarType.Int8, 0), (ScalarType.Byte, 1), (ScalarType.Int32, 2), (ScalarType.Int64, 4),
            (ScalarType.Float16, 6), (ScalarType.Float32, 7), (ScalarType.Float64, 8), (ScalarType.BFloat16, 9),
        };
        foreach (var (dtype, nccl) in types)
        {
            Assert.Equal(nccl, (int)NcclCommunicator.DataType(dtype));
        }

        Assert.Equal(0, (int)NcclCommunicator.RedOp(ReduceOp.Sum));
        Assert.Equal(2, (int)NcclCommunicator.RedOp(ReduceOp.Max));
        Assert.Equal([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], Enum.GetValues<NcclDataType>().Select(v => (int)v));
        Assert.Equal([0, 1, 2, 3, 4], Enum.GetValues<NcclRedOp>().Select(v => (int)v));
        var e = Assert.Throws<ArgumentException>(() => NcclCommunicator.DataType(ScalarType.Bool));
        Assert.Equal("dtype", e.ParamName);
    }

    [Fact]
    public unsafe void Unique_id_is_128_bytes_by_value_and_round_trips()
    {
        Assert.Equal(128, sizeof(NcclUniqueId));
        Assert.Equal(128, Marshal.SizeOf<NcclUniqueId>());
        var bytes = Enumerable.Range(0, 128).Select(i => (byte)(i * 7 + 3)).ToArray();
        Assert.Equal(bytes, NcclUniqueId.From(bytes).ToArray());
        Assert.Throws<CollectiveException>(() => NcclUniqueId.From(new byte[127]));
    }

    [Fact]
    public void Version_codes_read_as_nccl_h_encodes_them()
    {
        Assert.Equal("2.21.5", NcclLibrary.VersionText(22105)); // X·10000 + Y·100 + Z after 2.8
        Assert.Equal("2.7.8", NcclLibrary.VersionText(2708)); // X·1000 + Y·100 + Z up to 2.8
        Assert.Equal("2.28.3", NcclLibrary.VersionText(22803));
    }

    [Fact]
    public void Search_order_is_override_system_loader_ld_path_pytorch_then_python_folders()
    {
        var root = Directory.CreateTempSubdirectory("nccl-search").FullName;
        try
        {
            string Lib(params string[] parts)
            {
                var folder = Path.Combine([root, .. parts]);
                Directory.CreateDirectory(folder);
                var file = Path.Combine(folder, NcclLibrary.FileName);
                File.WriteAllBytes(file, []);
                return file;
            }

            var explicitFile = Lib("explicit");
            var ld = Lib("ld");
            var torchNccl = Lib("venv", "lib", "python3.12", "site-packages", "nvidia", "nccl", "lib");
            var dist = Lib("usr", "local", "lib", "python3.11", "dist-packages", "nvidia", "nccl", "lib");
            var site = Lib("usr", "local", "lib", "python3.12", "site-packages", "nvidia", "nccl", "lib");
            var debian = Lib("usr", "lib", "python3", "dist-packages", "nvidia", "nccl", "lib");
            Directory.CreateDirectory(Path.Combine(root, "empty"));
            var env = new Dictionary<string, string?>
            {
                ["REPLKNET_NCCL_LIBRARY"] = explicitFile,
                ["LD_LIBRARY_PATH"] = $"{Path.Combine(root, "empty")}:{Path.GetDirectoryName(ld)}",
                ["REPLKNET_LIBTORCH"] = Path.Combine(root, "venv", "lib", "python3.12", "site-packages", "torch", "lib"),
                ["VIRTUAL_ENV"] = Path.Combine(root, "venv"), // the same file again: listed once
            };

            var candidates = NcclLibrary.Candidates(name => env.GetValueOrDefault(name), root);

            Assert.Equal([explicitFile, NcclLibrary.FileName, ld, torchNccl, dist, site, debian], candidates);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void Not_available_reasons_name_the_switch_the_search_and_unusable_files()
    {
        var root = Directory.CreateTempSubdirectory("nccl-none").FullName;
        try
        {
            var tried = new List<string>();
            bool Nothing(string path, out IntPtr handle)
            {
                tried.Add(path);
                handle = IntPtr.Zero;
                return false;
            }

            var (api, reason) = NcclLibrary.Load(name => name == "REPLKNET_NCCL" ? "0" : null, root, Nothing);
            Assert.Null(api);
            Assert.Equal("NCCL disabled by REPLKNET_NCCL=0", reason);
            Assert.Empty(tried);

            (api, reason) = NcclLibrary.Load(_ => null, root, Nothing);
            Assert.Null(api);
            Assert.Equal([NcclLibrary.FileName], tried);
            Assert.Contains("libnccl.so.2 not found (tried libnccl.so.2;", reason + ";", StringComparison.Ordinal);
            Assert.Contains("REPLKNET_NCCL_LIBRARY", reason, StringComparison.Ordinal);

            // A library that loads but is not NCCL (the C library): skipped, and named with the missing entry point.
            bool LibC(string path, out IntPtr handle) => NativeLibrary.TryLoad("libc.so.6", out handle);
            (api, reason) = NcclLibrary.Load(_ => null, root, LibC);
            Assert.Null(api);
            Assert.Equal("no usable libnccl.so.2: libnccl.so.2 (no ncclGetVersion)", reason);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void Unique_id_comes_from_rank_0_only_and_every_rank_inits_with_it()
    {
        var id = Enumerable.Range(0, 128).Select(i => (byte)(255 - i)).ToArray();
        var calls = new ConcurrentQueue<string>();
        var seen = new byte[3][];
        ThreadProcessGroup.Run(3, g =>
        {
            var api = new RecordingNccl(g.Rank, id, calls);
            using var comm = NcclCommunicator.Create(g, device: 2, api);
            Assert.Equal(2, comm.Device);
            Assert.Equal(22105, comm.Version);
            Assert.Equal((3, g.Rank), api.Init);
            Assert.Equal(g.Rank == 0 ? ["use 2", "id", "use 2", "init"] : ["use 2", "init"], api.Calls);
            seen[g.Rank] = api.InitId!;
        });

        Assert.All(seen, s => Assert.Equal(id, s));
        Assert.Equal(1, calls.Count(c => c == "id"));
    }

    [Fact]
    public void Agreement_stages_everywhere_when_one_rank_lacks_nccl()
    {
        var answers = new string?[3];
        ThreadProcessGroup.Run(3, g => answers[g.Rank] = NcclAgreement.Agree(g, g.Rank == 1 ? "libnccl.so.2 not found" : null));
        Assert.Equal("NCCL is unavailable on rank(s) 1 of 3, so every rank stages CUDA tensors through host memory", answers[0]);
        Assert.Equal("libnccl.so.2 not found", answers[1]);
        Assert.Equal(answers[0], answers[2]);

        ThreadProcessGroup.Run(2, g => answers[g.Rank] = NcclAgreement.Agree(g, null));
        Assert.Null(answers[0]);
        Assert.Null(answers[1]);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void Collectives_pass_pointer_count_type_and_op_of_the_tensor_memory(int world)
    {
        var hub = new HostNccl.Hub(world);
        ThreadProcessGroup.Run(world, g =>
        {
            using var scope = NewDisposeScope();
            using var comm = NcclCommunicator.Create(g, 0, new HostNccl(hub, g.Rank));
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64, ScalarType.Int64 })
            {
                // A contiguous view past its storage offset: the pointer must include the offset.
                var whole = RankValues(world, g.Rank, 41, dtype);
                var slice = whole.narrow(0, 3, 29);
                var before = whole.clone();
                comm.AllReduce(slice, ReduceOp.Sum);
                var expected = Enumerable.Range(0, world).Select(r => RankValues(world, r, 41, dtype).to(ScalarType.Float64)).Aggregate((a, b) => a + b).narrow(0, 3, 29);
                Assert.True(Same(slice.to(ScalarType.Float64), expected), $"{dtype} sum");
                Assert.True(Same(whole.narrow(0, 0, 3), before.narrow(0, 0, 3)), "memory before the view untouched");
                Assert.True(Same(whole.narrow(0, 32, 9), before.narrow(0, 32, 9)), "memory after the view untouched");

                var max = RankValues(world, g.Rank, 17, dtype);
                comm.AllReduce(max, ReduceOp.Max);
                var expectedMax = torch.stack(Enumerable.Range(0, world).Select(r => RankValues(world, r, 17, dtype).to(ScalarType.Float64)).ToArray()).amax([0]);
                Assert.True(Same(max.to(ScalarType.Float64), expectedMax), $"{dtype} max");

                var b = RankValues(world, g.Rank, 13, dtype).view(13, 1);
                comm.Broadcast(b, root: world - 1);
                Assert.True(Same(b.view(13).to(ScalarType.Float64), RankValues(world, world - 1, 13, dtype).to(ScalarType.Float64)), $"{dtype} broadcast");
            }
        });
        Assert.Equal(world * 9, hub.Calls);
    }

    [Fact]
    public void The_device_check_runs_through_a_communicator_16_bit_tensors_included()
    {
        var hub = new HostNccl.Hub(2);
        var results = new IReadOnlyList<string>[2];
        ThreadProcessGroup.Run(2, g =>
        {
            using var comm = NcclCommunicator.Create(g, 0, new HostNccl(hub, g.Rank));
            results[g.Rank] = CollectiveCheck.Run(new ThroughNccl(g, comm), TorchSharp.torch.CPU);
        });
        Assert.All(results, r => Assert.Equal(0, CollectiveCheck.Failures(r)));
        Assert.Equal(2 * 24, hub.Calls); // 4 dtypes × 2 sizes × 3 collectives per rank, all on the communicator
    }

    [Fact]
    public void Communicator_rejects_tensors_it_cannot_take_with_the_argument_named()
    {
        ThreadProcessGroup.Run(1, g =>
        {
            using var scope = NewDisposeScope();
            using var comm = NcclCommunicator.Create(g, 0, new HostNccl(new HostNccl.Hub(1), 0));
            var e = Assert.Throws<ArgumentException>(() => comm.AllReduce(torch.ones(4, 4).t()));
            Assert.Equal("tensor", e.ParamName);
            Assert.StartsWith("tensor:", e.Message, StringComparison.Ordinal);
            e = Assert.Throws<ArgumentException>(() => comm.AllReduce(torch.ones(4, dtype: ScalarType.Float16)));
            Assert.Equal("tensor", e.ParamName);

            using var gpu = NcclCommunicator.Create(g, 1, new RecordingNccl(0, new byte[128], new ConcurrentQueue<string>()));
            e = Assert.Throws<ArgumentException>(() => gpu.Broadcast(torch.ones(4)));
            Assert.Contains("this rank's NCCL communicator is on cuda:1", e.Message, StringComparison.Ordinal);
        });
    }

    [Fact]
    public void A_failed_collective_aborts_the_communicator_at_disposal()
    {
        var calls = new ConcurrentQueue<string>();
        ThreadProcessGroup.Run(1, g =>
        {
            var api = new RecordingNccl(0, new byte[128], calls) { Fail = true, Host = true };
            var comm = NcclCommunicator.Create(g, 0, api);
            Assert.Throws<CollectiveException>(() => comm.AllReduce(torch.ones(3)));
            comm.Dispose();
            comm.Dispose();
            Assert.Equal("abort", api.Calls[^1]);
            Assert.Single(api.Calls, c => c is "abort" or "destroy");
            Assert.Throws<ObjectDisposedException>(() => comm.AllReduce(torch.ones(3)));
        });
    }

    [Fact]
    public void Placement_is_local_rank_modulo_devices_and_oversubscription_is_reported()
    {
        Assert.Equal(0, GpuPlacement.DeviceIndex(0, 8));
        Assert.Equal(7, GpuPlacement.DeviceIndex(7, 8));
        Assert.Equal(1, GpuPlacement.DeviceIndex(5, 4));
        Assert.Equal("localRank", Assert.Throws<ArgumentOutOfRangeException>(() => GpuPlacement.DeviceIndex(-1, 2)).ParamName);
        Assert.Equal("deviceCount", Assert.Throws<ArgumentOutOfRangeException>(() => GpuPlacement.DeviceIndex(0, 0)).ParamName);
        Assert.Equal("cuda:0", GpuPlacement.DeviceName(ProcessGroup.Single, 4));
        Assert.Null(GpuPlacement.Oversubscribed(ProcessGroup.Single, 1));
        Assert.Equal("1 processes share 0 CUDA device(s) on this machine; NCCL needs one device per process", GpuPlacement.Oversubscribed(ProcessGroup.Single, 0));
    }

    private static bool Same(Tensor a, Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.dtype == b.dtype && a.equal(b).all().item<bool>();

    /// <summary>Distinct values per rank and element (exact in float32: small integers and halves).</summary>
    private static Tensor RankValues(int world, int rank, int n, ScalarType dtype)
    {
        var values = Enumerable.Range(0, n).Select(i => (double)((i * 7 + rank * 13) % 23 - 11) + (dtype == ScalarType.Int64 ? 0 : 0.5 * ((i + rank) % 2))).ToArray();
        return torch.tensor(values).to(dtype);
    }

    /// <summary>Records calls; optionally fails collectives.</summary>
    private sealed class RecordingNccl(int myRank, byte[] id, ConcurrentQueue<string> shared) : INcclApi
    {
        public List<string> Calls { get; } = [];

        public (int World, int Rank) Init { get; private set; }

        public byte[]? InitId { get; private set; }

        public bool Fail { get; init; }

        public bool Host { get; init; }

        public bool DeviceMemory => !Host;

        public int Version => 22105;

        public void UseDevice(int device) => Calls.Add($"use {device}");

        public byte[] GetUniqueId()
        {
            Assert.Equal(0, myRank);
            Calls.Add("id");
            shared.Enqueue("id");
            return (byte[])id.Clone();
        }

        public IntPtr InitRank(int worldSize, byte[] uniqueId, int rank)
        {
            Calls.Add("init");
            Init = (worldSize, rank);
            InitId = uniqueId;
            return new IntPtr(0x1000 + rank);
        }

        public void AllReduce(IntPtr buffer, long count, NcclDataType type, NcclRedOp op, IntPtr comm) =>
            throw (Fail ? new CollectiveException("ncclAllReduce failed: unhandled system error") : new InvalidOperationException());

        public void Broadcast(IntPtr buffer, long count, NcclDataType type, int root, IntPtr comm) => throw new InvalidOperationException();

        public void Synchronize(IntPtr comm) => Calls.Add("sync");

        public void Destroy(IntPtr comm, bool abort) => Calls.Add(abort ? "abort" : "destroy");
    }

    /// <summary>NCCL's semantics on host memory across the threads of a <see cref="ThreadProcessGroup"/> job (reduction in float64, rank order).</summary>
    private sealed unsafe class HostNccl(HostNccl.Hub hub, int myRank) : INcclApi
    {
        public bool DeviceMemory => false;

        public int Version => 22105;

        public void UseDevice(int device)
        {
        }

        public byte[] GetUniqueId() => new byte[128];

        public IntPtr InitRank(int worldSize, byte[] uniqueId, int rank) => new(1);

        public void AllReduce(IntPtr buffer, long count, NcclDataType type, NcclRedOp op, IntPtr comm)
        {
            Assert.True(op is NcclRedOp.Sum or NcclRedOp.Max);
            var result = new double[count];
            Exchange(buffer, () =>
            {
                for (long i = 0; i < count; i++)
                {
                    double acc = op == NcclRedOp.Sum ? 0 : double.NegativeInfinity;
                    for (int r = 0; r < hub.Size; r++)
                    {
                        double v = Read(hub.Buffers[r], i, type);
                        acc = op == NcclRedOp.Sum ? acc + v : Math.Max(acc, v);
                    }

                    result[i] = acc;
                }
            });
            for (long i = 0; i < count; i++)
            {
                Write(buffer, i, type, result[i]);
            }

            hub.Barrier.SignalAndWait();
        }

        public void Broadcast(IntPtr buffer, long count, NcclDataType type, int root, IntPtr comm)
        {
            var result = new double[count];
            Exchange(buffer, () =>
            {
                for (long i = 0; i < count; i++)
                {
                    result[i] = Read(hub.Buffers[root], i, type);
                }
            });
            for (long i = 0; i < count; i++)
            {
                Write(buffer, i, type, result[i]);
            }

            hub.Barrier.SignalAndWait();
        }

        public void Synchronize(IntPtr comm)
        {
        }

        public void Destroy(IntPtr comm, bool abort) => Assert.False(abort);

        private void Exchange(IntPtr buffer, Action read)
        {
            Interlocked.Increment(ref hub.Calls);
            hub.Buffers[myRank] = buffer;
            hub.Barrier.SignalAndWait();
            read();
            hub.Barrier.SignalAndWait();
        }

        private static double Read(IntPtr p, long i, NcclDataType type) => type switch
        {
            NcclDataType.Float32 => ((float*)p)[i],
            NcclDataType.Float64 => ((double*)p)[i],
            NcclDataType.Int64 => ((long*)p)[i],
            _ => throw new InvalidOperationException($"unexpected {type}"),
        };

        private static void Write(IntPtr p, long i, NcclDataType type, double v)
        {
            switch (type)
            {
                case NcclDataType.Float32: ((float*)p)[i] = (float)v; break;
                case NcclDataType.Float64: ((double*)p)[i] = v; break;
                case NcclDataType.Int64: ((long*)p)[i] = (long)v; break;
                default: throw new InvalidOperationException($"unexpected {type}");
            }
        }

        public sealed class Hub(int size)
        {
            public int Calls;

            public int Size { get; } = size;

            public Barrier Barrier { get; } = new(size);

            public IntPtr[] Buffers { get; } = new IntPtr[size];
        }
    }
}

public sealed class CollectiveCheckTests
{
    public CollectiveCheckTests() => Torch.EnsureLoaded();

    [Fact]
    public void The_device_check_passes_on_a_correct_group_and_fails_on_a_wrong_one()
    {
        var results = new IReadOnlyList<string>[2];
        ThreadProcessGroup.Run(2, g => results[g.Rank] = CollectiveCheck.Run(g, TorchSharp.torch.CPU));
        Assert.All(results, r => Assert.Equal(0, CollectiveCheck.Failures(r)));
        Assert.Equal(32, results[0].Count);

        // A broken collective is caught: allreduce doubling (sum and max of one rank are its own values) fails all 16 allreduces.
        var broken = CollectiveCheck.Run(new DoublingGroup(), TorchSharp.torch.CPU);
        Assert.Equal(16, CollectiveCheck.Failures(broken));
    }

    /// <summary>A wrong one-process group: allreduce doubles its input.</summary>
    private sealed class DoublingGroup : ProcessGroup
    {
        public override int Rank => 0;

        public override int WorldSize => 1;

        public override string Backend => "broken";

        public override void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum) => tensor.add_(tensor);

        public override void AllReduce(double[] values, ReduceOp op = ReduceOp.Sum)
        {
        }

        public override void Broadcast(Tensor tensor, int root = 0)
        {
        }

        public override byte[] Broadcast(byte[]? bytes, int root = 0) => bytes!;

        public override void Barrier()
        {
        }

        public override void Abort(int exitCode) => throw new InvalidOperationException();
    }
}
