/* A stand-in libcuda.so.1 for building TVM CUDA modules on a machine with no GPU driver.
 *
 * libtvm_runtime_cuda.so links against the CUDA driver library. Without one it cannot load,
 * and TVM then silently embeds CUDA *source* in exported modules instead of compiled kernels.
 * With this stub on LD_LIBRARY_PATH it loads, so TVM_CUDA_COMPILE_MODE=nvcc compiles every
 * kernel to a fatbin at build time. Every entry point fails with CUDA_ERROR_NO_DEVICE (100):
 * nothing can run on this stub, it only satisfies the loader. These are the driver symbols
 * libtvm_runtime_cuda.so (apache-tvm 0.27) imports; check with `nm -D --undefined-only`.
 */
typedef int CUresult;
#define CUDA_ERROR_NO_DEVICE 100
#define SPARSEC_STUB(name) CUresult name(void) { return CUDA_ERROR_NO_DEVICE; }

SPARSEC_STUB(cuDeviceGetName)
SPARSEC_STUB(cuFuncSetAttribute)
SPARSEC_STUB(cuLaunchKernelEx)
SPARSEC_STUB(cuModuleGetFunction)
SPARSEC_STUB(cuModuleLoadData)
SPARSEC_STUB(cuModuleUnload)
SPARSEC_STUB(cuTensorMapEncodeTiled)

CUresult cuGetErrorName(CUresult error, const char **name) {
    (void)error;
    if (name) *name = "CUDA_ERROR_NO_DEVICE";
    return 0;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
    (void)error;
    if (text) *text = "sparsec build stub of libcuda.so.1: no GPU driver on this machine";
    return 0;
}
