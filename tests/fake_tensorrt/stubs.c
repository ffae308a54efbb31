/* Stand-ins for the C entry points the TensorRT Python bindings link against (libnvinfer,
 * libnvonnxparser, libnvinfer_plugin): enough for `import tensorrt` to load the real bindings, with
 * their complete API, on a machine without TensorRT. Every factory returns NULL; nothing here runs a
 * network. The same file is compiled into all three libraries. */
#include <stdbool.h>
#include <stddef.h>

void *createInferBuilder_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return NULL; }
void *getPluginRegistry(void) { return NULL; }
void *getBuilderPluginRegistry(int capability) { return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
bool initLibNvInferPlugins(void *logger, const char *ns) { return false; }
